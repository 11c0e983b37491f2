import KHOSystem

#if canImport(Glibc)
  import Glibc
#endif

/// File descriptors handed to the next image under names, in the manner of
/// systemd's `LISTEN_FDS` / `LISTEN_FDNAMES`.
///
/// The fds keep their numbers across the handover (no `dup2` into 3, 4,
/// ...: an in-place exec that fails must leave the process's fd table as it
/// was), so the names travel with the numbers in one variable:
/// `KHO_FDS=listen:5,control:7`.
///
/// ```swift
/// var fds = NamedFileDescriptors()
/// try fds.register(listener, name: "listen")
/// // ... in the next image:
/// let inherited = try NamedFileDescriptors.inherited()
/// let listener = inherited["listen"]
/// ```
public struct NamedFileDescriptors: Sendable, Equatable {
  /// The variable naming the handed-over fds: `KHO_FDS=name:fd,...`.
  public static let environmentName = "KHO_FDS"

  /// Name and fd, in registration order.
  public private(set) var entries: [(name: String, fd: Int32)] = []

  /// No fds.
  public init() {}

  public static func == (a: Self, b: Self) -> Bool {
    a.entries.elementsEqual(b.entries) { $0.name == $1.name && $0.fd == $1.fd }
  }

  /// Why a name or fd was refused.
  public enum Failure: Error, Sendable, Equatable, CustomStringConvertible {
    case badName(String)
    case duplicateName(String)
    case notOpen(name: String, fd: Int32)
    case malformed(String)

    public var description: String {
      switch self {
      case .badName(let n): return "fd name \"\(n)\" must be 1-255 characters of [A-Za-z0-9_.-]"
      case .duplicateName(let n): return "an fd named \"\(n)\" is already registered"
      case .notOpen(let n, let fd): return "fd \(fd) named \"\(n)\" is not open"
      case .malformed(let s): return "malformed \(NamedFileDescriptors.environmentName) \"\(s)\""
      }
    }
  }

  /// The fd registered as `name`.
  public subscript(name: String) -> Int32? {
    entries.first { $0.name == name }?.fd
  }

  /// Registers `fd` under `name`; the fd must be open.
  public mutating func register(_ fd: Int32, name: String) throws(Failure) {
    guard Self.isValidName(name) else { throw .badName(name) }
    guard self[name] == nil else { throw .duplicateName(name) }
    guard FileDescriptor(rawValue: fd).isOpen else { throw .notOpen(name: name, fd: fd) }
    entries.append((name, fd))
  }

  /// Forgets `name`; returns its fd (not closed).
  @discardableResult
  public mutating func unregister(_ name: String) -> Int32? {
    guard let i = entries.firstIndex(where: { $0.name == name }) else { return nil }
    return entries.remove(at: i).fd
  }

  /// The variable's value: `name:fd,name:fd`.
  public var environmentValue: String {
    entries.map { "\($0.name):\($0.fd)" }.joined(separator: ",")
  }

  /// Parses a value of ``environmentName``, checking every fd is open and
  /// above 2.
  public init(parsing value: String) throws(Failure) {
    self.init()
    if value.isEmpty { return }
    for item in value.split(separator: ",", omittingEmptySubsequences: false) {
      let parts = item.split(separator: ":", omittingEmptySubsequences: false)
      // A handover never names standard input, output or error: a value
      // that does would have the service serve (or close) its own stdio.
      guard parts.count == 2, let fd = Int32(parts[1]), fd > 2 else { throw .malformed(value) }
      try register(fd, name: String(parts[0]))
    }
  }

  /// The fds the previous image handed over, from the environment (empty
  /// when there were none).
  public static func inherited() throws(Failure) -> NamedFileDescriptors {
    guard let value = Environment.value(of: environmentName) else { return NamedFileDescriptors() }
    return try NamedFileDescriptors(parsing: value)
  }

  static func isValidName(_ name: String) -> Bool {
    let bytes = Array(name.utf8)
    guard (1...255).contains(bytes.count) else { return false }
    return bytes.allSatisfy { c in
      (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c)
        || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(c)
        || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) || c == UInt8(ascii: "_")
        || c == UInt8(ascii: "-")
        || c == UInt8(ascii: ".")
    }
  }
}
