import CKHOSystem

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Calls for handing established connections to another image: finding a
/// connection's descriptor by its addresses, checking what was received,
/// and duplicating it so that its current owner may close its own.
extension FileDescriptor {
  /// A second descriptor for the same open file, close-on-exec, numbered
  /// above stderr.
  ///
  /// The corresponding C function is `fcntl` (`F_DUPFD_CLOEXEC`).
  public func duplicate() throws(SystemCallError) -> FileDescriptor {
    let fd = try systemCall("fcntl") { fcntl(rawValue, F_DUPFD_CLOEXEC, Int32(3)) }.get()
    return FileDescriptor(rawValue: fd)
  }

  /// Whether this is a connected TCP socket (a stream socket of family
  /// `AF_INET` or `AF_INET6` that has a peer).
  ///
  /// The corresponding C functions are `getsockopt` (`SO_TYPE`) and
  /// `getpeername`.
  public func isConnectedTCPSocket() -> Bool {
    var type: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    let typed = systemCall("getsockopt") {
      getsockopt(rawValue, SOL_SOCKET, SO_TYPE, &type, &length)
    }
    guard (try? typed.get()) != nil, type == Int32(SOCK_STREAM.rawValue) else { return false }
    guard let peer = try? peerAddress() else { return false }
    let family = peer.withUnsafeBytes { $0.load(as: sa_family_t.self) }
    return Int32(family) == AF_INET || Int32(family) == AF_INET6
  }

  /// The address of the connected peer, as the kernel's `sockaddr` bytes
  /// (family, port, address; at most `sockaddr_storage`).
  ///
  /// The corresponding C function is `getpeername`.
  public func peerAddress() throws(SystemCallError) -> [UInt8] {
    var address = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    _ = try withUnsafeMutablePointer(to: &address) { pointer throws(SystemCallError) in
      try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        sockaddrPointer throws(SystemCallError) in
        try systemCall("getpeername") { getpeername(rawValue, sockaddrPointer, &length) }.get()
      }
    }
    return withUnsafeBytes(of: address) { Array($0.prefix(Int(length))) }
  }

  /// Bounds how long a blocking send waits for room (`0`: forever), so
  /// that a peer that stops reading fails the send with `EAGAIN` instead
  /// of blocking the sender.
  ///
  /// The corresponding C function is `setsockopt` (`SO_SNDTIMEO`).
  public func setSendTimeout(milliseconds: Int) throws(SystemCallError) {
    var timeout = timeval(tv_sec: milliseconds / 1000, tv_usec: (milliseconds % 1000) * 1000)
    _ = try systemCall("setsockopt") {
      setsockopt(
        rawValue, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }.get()
  }
}
