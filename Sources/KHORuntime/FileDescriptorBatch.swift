import KHOSystem

#if canImport(Glibc)
  import Glibc
#endif

/// Descriptors a service hands to its next image besides the named ones:
/// established connections, say, with one `blob` (a memfd) describing
/// them. The runtime carries them over a unix socket with SCM_RIGHTS, in
/// batches of at most `FileDescriptor.maxDescriptorsPerMessage`: the
/// handshake's socketpair when overlapped, a socketpair kept across the
/// `execve` in place. The receiver finds them in the same order.
public struct DescriptorParcel: Sendable {
  /// What describes the descriptors (format the service's own).
  public var blob: FileDescriptor
  /// The descriptors, in order. The sender's stay its own (the runtime
  /// never closes them: on rollback the service goes on with them); the
  /// receiver owns those it received.
  public var descriptors: [FileDescriptor]

  /// A parcel of the memfd `blob` and `descriptors`.
  public init(blob: FileDescriptor, descriptors: [FileDescriptor]) {
    self.blob = blob
    self.descriptors = descriptors
  }

  /// Closes the blob and every descriptor (the receiver's, when it refuses
  /// them).
  public func closeAll() {
    blob.closeIgnoringErrors()
    for fd in descriptors { fd.closeIgnoringErrors() }
  }

  /// The most descriptors a receiver takes; more are closed on arrival.
  public static let maxDescriptors = 1 << 17
}

/// The parcel's messages on the socket. Each is one fixed header
/// {magic, kind, count} with `count` descriptors attached; because every
/// message but the end carries descriptors, a stream socket delivers each
/// by itself (the kernel never joins data across SCM_RIGHTS).
enum DescriptorBatch {
  static let magic: UInt32 = 0x4b50_434c  // "KPCL"
  static let headerSize = 12

  enum Kind: UInt32 {
    case blob = 1
    case batch = 2
    case end = 3
  }

  /// Sends the blob, then the descriptors in batches, then an end marker.
  static func send(_ parcel: DescriptorParcel, on socket: FileDescriptor) throws(SystemCallError) {
    try sendOne(.blob, [parcel.blob], on: socket)
    var start = 0
    while start < parcel.descriptors.count {
      let end = min(start + FileDescriptor.maxDescriptorsPerMessage, parcel.descriptors.count)
      try sendOne(.batch, Array(parcel.descriptors[start..<end]), on: socket)
      start = end
    }
    try sendOne(.end, [], on: socket)
  }

  private static func sendOne(_ kind: Kind, _ fds: [FileDescriptor], on socket: FileDescriptor)
    throws(SystemCallError)
  {
    var header = [UInt8](repeating: 0, count: headerSize)
    header.withUnsafeMutableBytes { raw in
      raw.storeBytes(of: magic.littleEndian, toByteOffset: 0, as: UInt32.self)
      raw.storeBytes(of: kind.rawValue.littleEndian, toByteOffset: 4, as: UInt32.self)
      raw.storeBytes(of: UInt32(fds.count).littleEndian, toByteOffset: 8, as: UInt32.self)
    }
    let sent = try socket.sendMessage(header, descriptors: fds)
    guard sent == headerSize else { throw SystemCallError("sendmsg", .tryAgain) }
  }

  /// What one received message was.
  enum Received {
    /// A parcel message, taken into `parcel`.
    case parcelMessage
    /// The parcel's end marker.
    case end
    /// Other bytes (the handshake's `GO`), not parcel data.
    case other([UInt8])
    /// End of file.
    case closed
  }

  /// Gathers parcel messages into a parcel being received. Anything
  /// malformed is closed and dropped, never trusted: a wrong magic, a
  /// second blob, descriptors beyond ``DescriptorParcel/maxDescriptors``.
  struct Receiver {
    var blob: FileDescriptor?
    var descriptors: [FileDescriptor] = []
    var malformed = false

    mutating func receive(from socket: FileDescriptor) throws(SystemCallError) -> Received {
      var buffer = [UInt8](repeating: 0, count: DescriptorBatch.headerSize)
      let result = buffer.withUnsafeMutableBytes { raw in
        Result { () throws(SystemCallError) in try socket.receiveMessage(into: raw) }
      }
      let message = try result.get()
      let bytes = Array(buffer.prefix(message.byteCount))
      if message.byteCount == 0 && message.descriptors.isEmpty { return .closed }
      guard message.byteCount == DescriptorBatch.headerSize, !message.truncated,
        let kind = Self.kind(of: bytes)
      else {
        for fd in message.descriptors { fd.closeIgnoringErrors() }
        return .other(bytes)
      }
      switch kind {
      case .blob where blob == nil && message.descriptors.count == 1:
        blob = message.descriptors[0]
      case .batch
      where descriptors.count + message.descriptors.count <= DescriptorParcel.maxDescriptors:
        descriptors += message.descriptors
        if message.descriptorsTruncated { malformed = true }
      case .end:
        for fd in message.descriptors { fd.closeIgnoringErrors() }
        return .end
      default:
        malformed = true
        for fd in message.descriptors { fd.closeIgnoringErrors() }
      }
      return .parcelMessage
    }

    private static func kind(of bytes: [UInt8]) -> Kind? {
      bytes.withUnsafeBytes { raw in
        guard UInt32(littleEndian: raw.loadUnaligned(as: UInt32.self)) == DescriptorBatch.magic
        else { return nil }
        return Kind(
          rawValue: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
      }
    }

    /// The parcel, if one arrived whole; else everything received is
    /// closed.
    func finish() -> DescriptorParcel? {
      guard let blob, !malformed else {
        blob?.closeIgnoringErrors()
        for fd in descriptors { fd.closeIgnoringErrors() }
        return nil
      }
      return DescriptorParcel(blob: blob, descriptors: descriptors)
    }
  }

  /// Receives a whole parcel from `socket` (in place: the socketpair end
  /// kept across `execve`), up to its end marker or end of file.
  static func receiveAll(from socket: FileDescriptor) -> DescriptorParcel? {
    var receiver = Receiver()
    while true {
      guard let received = try? receiver.receive(from: socket) else { break }
      switch received {
      case .parcelMessage: continue
      case .end: return receiver.finish()
      case .other, .closed: break
      }
      break
    }
    receiver.malformed = true
    return receiver.finish()
  }
}

// MARK: The runtime's side

extension HandoverRuntime {
  /// The name of the socket that carries a parcel across an in-place
  /// `execve`.
  static let parcelSocketName = "kho-parcel"

  /// Hands `parcel` to the next image with the coming handover: call it
  /// from a FREEZE notifier (after which the descriptors' state no longer
  /// changes). The runtime owns the blob from then on (closed once sent,
  /// or when the handover fails); the descriptors stay the service's, open
  /// until the handover ends (UNFREEZE or ABORT tell it to go on with them).
  public func offer(_ parcel: DescriptorParcel) {
    outgoingParcelStore { old in
      old?.blob.closeIgnoringErrors()
      old = parcel
    }
  }

  /// The descriptors the previous image handed over, once: after an
  /// overlapped handover they arrive in ``ready(status:)``, after one in
  /// place at boot. nil if none came (or they were malformed, and closed).
  public func takeParcel() -> DescriptorParcel? {
    incomingParcelStore { parcel in
      defer { parcel = nil }
      return parcel
    }
  }

  /// Overlapped: sends the offered parcel to the next image before `GO`.
  func sendParcel(on socket: FileDescriptor) throws(SystemCallError) {
    guard
      let parcel = outgoingParcelStore({ p in
        defer { p = nil }
        return p
      })
    else { return }
    defer { parcel.blob.closeIgnoringErrors() }
    // A next image that stops reading must fail the handover, not hang it.
    try socket.setSendTimeout(milliseconds: 10_000)
    try DescriptorBatch.send(parcel, on: socket)
  }

  /// In place: puts the offered parcel in a new socketpair and registers
  /// the receiving end to be kept across the `execve`; returns that end.
  func carryParcelAcrossExec() throws(SystemCallError) -> FileDescriptor? {
    guard
      let parcel = outgoingParcelStore({ p in
        defer { p = nil }
        return p
      })
    else { return nil }
    defer { parcel.blob.closeIgnoringErrors() }
    let (sending, receiving) = try FileDescriptor.socketPair()
    defer { sending.closeIgnoringErrors() }
    do throws(SystemCallError) {
      // Nobody reads until after the exec: a full socket must fail, not block.
      try sending.setSendTimeout(milliseconds: 1000)
      try DescriptorBatch.send(parcel, on: sending)
      do {
        try register(receiving.rawValue, name: Self.parcelSocketName, keepAcrossCrash: false)
      } catch { throw SystemCallError("socketpair", .invalidArgument) }
    } catch {
      receiving.closeIgnoringErrors()
      throw error
    }
    return receiving
  }

  /// After a failed `execve`: forgets the socket (and closes what it holds).
  func dropCarriedParcel(_ receiving: FileDescriptor) {
    unregister(Self.parcelSocketName)
    if let parcel = DescriptorBatch.receiveAll(from: receiving) { parcel.closeAll() }
    receiving.closeIgnoringErrors()
  }

  /// At boot after an in-place handover: the parcel from the socket kept
  /// across the exec (which is closed and forgotten).
  static func takeInPlaceParcel(_ inherited: inout NamedFileDescriptors) -> DescriptorParcel? {
    guard let fd = inherited.unregister(parcelSocketName) else { return nil }
    let socket = FileDescriptor(rawValue: fd)
    defer { socket.closeIgnoringErrors() }
    return DescriptorBatch.receiveAll(from: socket)
  }
}
