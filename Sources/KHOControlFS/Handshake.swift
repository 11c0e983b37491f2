import CFUSEKernel
import KHOSystem

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// FUSE_INIT, which the kernel sends once per connection, right after the
/// mount: the negotiation whose outcome ``ControlConnectionState`` carries
/// to the next images.
enum Handshake {
  /// The largest WRITE we ask for. It must exceed one page so that a write
  /// of more than 4096 bytes reaches us whole (or as a first request over a
  /// page) and fails with E2BIG, instead of being split into page-sized
  /// requests that would each succeed.
  static let maxWrite: UInt32 = 65536
  /// The oldest protocol we speak: 7.26 (Linux 4.18) has every message we use
  /// in its present layout.
  static let minimumMinor: UInt32 = 26
  /// What we ask for: O_TRUNC passed in OPEN instead of a SETATTR, and
  /// writes larger than a page.
  static let wantedFlags = UInt64(FUSE_ATOMIC_O_TRUNC) | UInt64(FUSE_BIG_WRITES)
  /// How long to wait for FUSE_INIT after mounting.
  static let timeoutMilliseconds: Int32 = 10_000

  /// Answers the connection's FUSE_INIT and returns what was agreed.
  static func initialize(fd: Int32, mountPoint: String) throws(ControlMountError)
    -> ControlConnectionState
  {
    var buffer = [UInt8](repeating: 0, count: Int(maxWrite) + Int(FUSE_MIN_READ_BUFFER))
    while true {
      let request = try readInit(fd: fd, buffer: &buffer)
      switch answer(request, mountPoint: mountPoint) {
      case .retry(let reply):
        try send(fd, reply)
      case .refuse(let reply, let error):
        try send(fd, reply)
        throw error
      case .agree(let reply, let state):
        try send(fd, reply)
        return state
      }
    }
  }

  /// What to do with one FUSE_INIT request.
  enum InitAnswer {
    /// Send the reply and wait for the next INIT: the kernel offered a newer
    /// major version and resends INIT with ours.
    case retry(reply: [UInt8])
    /// Send the reply (EPROTO) and give up.
    case refuse(reply: [UInt8], ControlMountError)
    /// Send the reply; the connection is set up as the state says.
    case agree(reply: [UInt8], ControlConnectionState)
  }

  /// The negotiation of one FUSE_INIT, without I/O (the seam the fuzzer
  /// drives too).
  static func answer(_ request: Request, mountPoint: String) -> InitAnswer {
    let unique = request.header.unique
    let offered = request.paddedArgument(fuse_init_in.self)
    if offered.major > FUSE_KERNEL_VERSION {
      return .retry(
        reply: replyMessage(unique: unique, payload: bytes(of: initOut(minor: 0, flags: 0))))
    }
    let minor = min(offered.minor, UInt32(FUSE_KERNEL_MINOR_VERSION))
    guard offered.major == FUSE_KERNEL_VERSION, minor >= minimumMinor else {
      return .refuse(
        reply: replyMessage(unique: unique, errno: EPROTO),
        .protocolMismatch(
          "kernel speaks \(offered.major).\(offered.minor), need 7.\(minimumMinor)"))
    }
    let flags = wantedFlags & kernelFlags(offered)
    let reply = replyMessage(
      unique: unique, payload: bytes(of: initOut(minor: minor, flags: flags)))
    return .agree(
      reply: reply,
      ControlConnectionState(minor: minor, flags: flags, maxWrite: maxWrite, mountPoint: mountPoint)
    )
  }

  /// The kernel's flags, flags2 in the high half when it has them.
  private static func kernelFlags(_ offered: fuse_init_in) -> UInt64 {
    let extended = offered.flags & UInt32(FUSE_INIT_EXT) != 0
    return UInt64(offered.flags) | (extended ? UInt64(offered.flags2) << 32 : 0)
  }

  /// Our FUSE_INIT reply.
  private static func initOut(minor: UInt32, flags: UInt64) -> fuse_init_out {
    var out = fuse_init_out()
    out.major = UInt32(FUSE_KERNEL_VERSION)
    out.minor = minor == 0 ? UInt32(FUSE_KERNEL_MINOR_VERSION) : minor
    out.flags = UInt32(truncatingIfNeeded: flags)
    out.flags2 = UInt32(truncatingIfNeeded: flags >> 32)
    out.max_readahead = 0
    out.max_background = 16
    out.congestion_threshold = 12
    out.max_write = maxWrite
    out.time_gran = 1
    return out
  }

  /// Reads the first request, which must be FUSE_INIT, waiting at most
  /// ``timeoutMilliseconds``.
  private static func readInit(fd: Int32, buffer: inout [UInt8]) throws(ControlMountError)
    -> Request
  {
    let descriptor = FileDescriptor(rawValue: fd)
    let ready = try checked { () throws(SystemCallError) in
      try descriptor.waitReadable(timeoutMilliseconds: timeoutMilliseconds)
    }
    guard ready else {
      throw .protocolMismatch("no FUSE_INIT within \(timeoutMilliseconds) ms")
    }
    let result: Result<Int, SystemCallError> = buffer.withUnsafeMutableBytes { raw in
      Result { () throws(SystemCallError) in try descriptor.read(into: raw) }
    }
    let count = try checked { () throws(SystemCallError) in try result.get() }
    guard
      let request = buffer.withUnsafeBytes({
        Request(UnsafeRawBufferPointer(rebasing: $0[..<count]))
      }),
      request.header.opcode == FUSE_INIT.rawValue
    else { throw .protocolMismatch("first message is not FUSE_INIT") }
    return request
  }

  /// Writes one reply, throwing on failure.
  private static func send(_ fd: Int32, _ message: [UInt8]) throws(ControlMountError) {
    try checked { () throws(SystemCallError) in try writeMessage(fd, message) }
  }
}
