/// What the kernel and the first image of a service agreed on in FUSE_INIT,
/// which the kernel sends once per connection: everything the next image
/// needs to go on answering on the inherited `/dev/fuse` fd without it.
///
/// It travels as a short string, typically in the environment variable
/// ``environmentVariable`` next to the fd itself:
///
/// ```swift
/// // the old image, inside the `execute` write handler:
/// let state = mount.prepareHandover(forwardingCurrentWrite: true)
/// setenv(ControlConnectionState.environmentVariable, state.encoded, 1)
/// // the next image:
/// let state = try ControlConnectionState(encoded: value)
/// let mount = try ControlMount.adopt(fd: fd, negotiated: state, tree: tree)
/// ```
///
/// The format is `kho-fuse-v1:minor=38,flags=0x28,max_write=65536,pending=17/2,path=/run/kho`:
/// the protocol minor version, the negotiated INIT flags (64 bits), the
/// maximum write size, optionally the request whose reply the next image owes
/// (unique id / bytes written), and last the mount point (anything after
/// `path=`, commas included).
public struct ControlConnectionState: Sendable, Hashable, CustomStringConvertible {
  /// The environment variable the runtime conventionally uses for it.
  public static let environmentVariable = "KHO_CONTROL_FUSE"

  /// The version tag at the start of the string; another tag is refused.
  static let tag = "kho-fuse-v1:"

  /// A write that the previous image accepted but did not answer (it was
  /// exec'ing): the next image answers it first, so the writer of `execute`
  /// returns once the next image serves.
  public struct PendingWrite: Sendable, Hashable {
    /// The kernel's id of the request.
    public var unique: UInt64
    /// The byte count the reply reports as written.
    public var size: UInt32

    /// A pending write reply.
    public init(unique: UInt64, size: UInt32) {
      self.unique = unique
      self.size = size
    }
  }

  /// The protocol minor version in use (major is always 7).
  public var minor: UInt32
  /// The INIT flags both sides agreed on (`FUSE_ATOMIC_O_TRUNC`...), flags2
  /// in the high 32 bits.
  public var flags: UInt64
  /// The largest WRITE the kernel sends; it sizes the read buffer.
  public var maxWrite: UInt32
  /// The mount point, for the final unmount.
  public var mountPoint: String
  /// The write the next image must answer first, if any.
  public var pendingWrite: PendingWrite?

  /// A state from its parts.
  public init(
    minor: UInt32, flags: UInt64, maxWrite: UInt32, mountPoint: String,
    pendingWrite: PendingWrite? = nil
  ) {
    self.minor = minor
    self.flags = flags
    self.maxWrite = maxWrite
    self.mountPoint = mountPoint
    self.pendingWrite = pendingWrite
  }

  /// The string form, for an environment variable.
  public var encoded: String {
    var fields = [
      "minor=\(minor)", "flags=0x\(String(flags, radix: 16))", "max_write=\(maxWrite)",
    ]
    if let pendingWrite { fields.append("pending=\(pendingWrite.unique)/\(pendingWrite.size)") }
    fields.append("path=\(mountPoint)")
    return Self.tag + fields.joined(separator: ",")
  }

  public var description: String { encoded }

  /// Parses the string form made by ``encoded``.
  ///
  /// - Parameter encoded: the string, as found in the environment.
  /// - Throws: ``ControlMountError/malformedState(_:)`` for another version
  ///   tag, a missing or malformed field, or an unknown field.
  public init(encoded: String) throws(ControlMountError) {
    guard encoded.hasPrefix(Self.tag) else { throw .malformedState("expected \(Self.tag)") }
    let body = encoded.dropFirst(Self.tag.count)
    guard let pathStart = Self.pathField(in: body) else { throw .malformedState("no path") }
    let path = String(body[pathStart...].dropFirst("path=".count))
    var fields: [Substring: Substring] = [:]
    for field in body[..<pathStart].split(separator: ",") {
      guard let eq = field.firstIndex(of: "=") else { throw .malformedState("field \(field)") }
      fields[field[..<eq]] = field[field.index(after: eq)...]
    }
    try self.init(fields: fields, path: path)
  }

  /// Where the `path=` field starts: the first one at the start or after a
  /// comma (the fields before it are numbers, so it cannot hide in them).
  private static func pathField(in body: Substring) -> Substring.Index? {
    var index = body.startIndex
    while index < body.endIndex {
      let atField = index == body.startIndex || body[body.index(before: index)] == ","
      if atField && body[index...].hasPrefix("path=") { return index }
      index = body.index(after: index)
    }
    return nil
  }

  /// The state from parsed `key=value` fields.
  private init(fields: [Substring: Substring], path: String) throws(ControlMountError) {
    guard !path.isEmpty, let minor = fields["minor"].flatMap({ UInt32($0) }),
      let flagsText = fields["flags"], flagsText.hasPrefix("0x"),
      let flags = UInt64(flagsText.dropFirst(2), radix: 16),
      let maxWrite = fields["max_write"].flatMap({ UInt32($0) })
    else { throw .malformedState("missing or malformed minor, flags, max_write or path") }
    var pending: PendingWrite?
    if let text = fields["pending"] {
      let parts = text.split(separator: "/")
      guard parts.count == 2, let unique = UInt64(parts[0]), let size = UInt32(parts[1]) else {
        throw .malformedState("pending \(text)")
      }
      pending = PendingWrite(unique: unique, size: size)
    }
    guard Set(fields.keys).isSubset(of: ["minor", "flags", "max_write", "pending"]) else {
      throw .malformedState("unknown field in \(fields.keys.sorted())")
    }
    self.init(
      minor: minor, flags: flags, maxWrite: maxWrite, mountPoint: path, pendingWrite: pending)
  }
}
