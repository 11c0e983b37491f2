import CKHOSystem

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A message received with ``FileDescriptor/receiveMessage(into:flags:maxDescriptors:)``.
public struct ReceivedMessage: Sendable {
  /// Bytes received; with `MSG_TRUNC`, the message's full length.
  public var byteCount: Int
  /// Descriptors that came with it (SCM_RIGHTS), close-on-exec; the
  /// receiver owns them.
  public var descriptors: [FileDescriptor]
  /// The sender's pid and uid (SCM_CREDENTIALS), if it sent them.
  public var senderPID: pid_t?
  /// The sender's uid (SCM_CREDENTIALS), if it sent one.
  public var senderUID: uid_t?
  /// `MSG_TRUNC`: the bytes did not fit; `MSG_CTRUNC`: descriptors were
  /// dropped (and closed).
  public var truncated: Bool
  /// `MSG_CTRUNC`: descriptors were dropped (and closed).
  public var descriptorsTruncated: Bool
}

extension FileDescriptor {
  /// The most descriptors one message carries (the kernel's `SCM_MAX_FD`).
  public static let maxDescriptorsPerMessage = Int(CKHO_SCM_MAX_FD)

  /// Sends `bytes` on a connected socket without raising SIGPIPE: a peer
  /// that is gone fails with `EPIPE`. Returns the bytes sent.
  ///
  /// The corresponding C function is `send` (`MSG_NOSIGNAL`).
  public func sendNoSignal(_ bytes: UnsafeRawBufferPointer) throws(SystemCallError) -> Int {
    try systemCall("send") {
      Glibc.send(rawValue, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
    }.get()
  }

  /// Sends one message of `bytes` with `descriptors` attached (SCM_RIGHTS,
  /// at most ``maxDescriptorsPerMessage``), to the connected peer or, for a
  /// datagram socket, to the unix socket `path` (a leading `@` names an
  /// abstract one). Never raises SIGPIPE. Returns the bytes sent.
  ///
  /// The corresponding C function is `sendmsg`.
  public func sendMessage(
    _ bytes: UnsafeRawBufferPointer, descriptors: [FileDescriptor] = [], to path: String? = nil
  ) throws(SystemCallError) -> Int {
    guard descriptors.count <= Self.maxDescriptorsPerMessage else {
      throw SystemCallError("sendmsg", .invalidArgument)
    }
    let fds = descriptors.map(\.rawValue)
    return try systemCall("sendmsg") {
      fds.withUnsafeBufferPointer { fdBuffer in
        if let path {
          return ckho_sendmsg_fds(
            rawValue, path, bytes.baseAddress, bytes.count, fdBuffer.baseAddress,
            Int32(fds.count), Int32(MSG_NOSIGNAL))
        }
        return ckho_sendmsg_fds(
          rawValue, nil, bytes.baseAddress, bytes.count, fdBuffer.baseAddress, Int32(fds.count),
          Int32(MSG_NOSIGNAL))
      }
    }.get()
  }

  /// ``sendMessage(_:descriptors:to:)`` of an array's bytes.
  public func sendMessage(
    _ bytes: [UInt8], descriptors: [FileDescriptor] = [], to path: String? = nil
  ) throws(SystemCallError) -> Int {
    let result: Result<Int, SystemCallError> = bytes.withUnsafeBytes { raw in
      Result { () throws(SystemCallError) in
        try sendMessage(raw, descriptors: descriptors, to: path)
      }
    }
    return try result.get()
  }

  /// Receives one message into `buffer`, with the descriptors and
  /// credentials that came with it. Descriptors beyond `maxDescriptors` are
  /// closed at once (``ReceivedMessage/descriptorsTruncated``): none leaks.
  ///
  /// - Parameters:
  ///   - buffer: where the bytes go.
  ///   - flags: `MSG_*` flags (`MSG_DONTWAIT`, `MSG_TRUNC`);
  ///     `MSG_CMSG_CLOEXEC` is always added.
  ///   - maxDescriptors: how many descriptors to take (at most
  ///     ``maxDescriptorsPerMessage``).
  ///
  /// The corresponding C function is `recvmsg`.
  public func receiveMessage(
    into buffer: UnsafeMutableRawBufferPointer, flags: Int32 = 0,
    maxDescriptors: Int = FileDescriptor.maxDescriptorsPerMessage
  ) throws(SystemCallError) -> ReceivedMessage {
    var received = ckho_received()
    let count = try systemCall("recvmsg") {
      ckho_recvmsg_fds(
        rawValue, buffer.baseAddress, buffer.count, flags,
        Int32(min(maxDescriptors, Self.maxDescriptorsPerMessage)), &received)
    }.get()
    let descriptors = withUnsafeBytes(of: received.fds) { raw in
      raw.bindMemory(to: Int32.self).prefix(Int(received.nfds)).map(FileDescriptor.init(rawValue:))
    }
    return ReceivedMessage(
      byteCount: count, descriptors: descriptors,
      senderPID: received.pid >= 0 ? received.pid : nil,
      senderUID: received.uid != uid_t.max ? received.uid : nil,
      truncated: received.msg_flags & Int32(MSG_TRUNC) != 0,
      descriptorsTruncated: received.msg_flags & Int32(MSG_CTRUNC) != 0)
  }

  /// A new unix datagram socket, close-on-exec.
  ///
  /// The corresponding C function is `socket` (`AF_UNIX`, `SOCK_DGRAM`).
  public static func datagramSocket() throws(SystemCallError) -> FileDescriptor {
    let fd = try systemCall("socket") {
      socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }.get()
    return FileDescriptor(rawValue: fd)
  }
}

extension FileDescriptor {
  /// A TCP socket bound to `address` (of `length` bytes, family `family`)
  /// and listening, close-on-exec, with `SO_REUSEADDR`.
  ///
  /// The corresponding C functions are `socket`, `setsockopt`, `bind` and
  /// `listen`.
  public static func listeningTCPSocket(
    family: Int32, address: UnsafePointer<sockaddr>, length: socklen_t, backlog: Int32
  ) throws(SystemCallError) -> FileDescriptor {
    let fd = FileDescriptor(
      rawValue: try systemCall("socket") {
        socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
      }.get())
    do {
      var one: Int32 = 1
      _ = try systemCall("setsockopt(SO_REUSEADDR)") {
        setsockopt(fd.rawValue, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
      }.get()
      _ = try systemCall("bind") { bind(fd.rawValue, address, length) }.get()
      _ = try systemCall("listen") { listen(fd.rawValue, backlog) }.get()
      return fd
    } catch {
      fd.closeIgnoringErrors()
      throw error
    }
  }

  /// Whether this is a socket that listens (`SO_ACCEPTCONN`).
  ///
  /// The corresponding C function is `getsockopt`.
  public func isListening() throws(SystemCallError) -> Bool {
    var accepting: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    _ = try systemCall("getsockopt(SO_ACCEPTCONN)") {
      getsockopt(rawValue, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length)
    }.get()
    return accepting == 1
  }

  /// The local port of an IPv4 or IPv6 socket; nil for another family.
  ///
  /// The corresponding C function is `getsockname`.
  public func localPort() throws(SystemCallError) -> Int? {
    var address = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    _ = try systemCall("getsockname") {
      withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(rawValue, $0, &length) }
      }
    }.get()
    let family = Int32(address.ss_family)
    guard family == AF_INET || family == AF_INET6 else { return nil }
    // sin_port and sin6_port both follow the 2-byte family.
    let port = withUnsafeBytes(of: address) { $0.load(fromByteOffset: 2, as: UInt16.self) }
    return Int(UInt16(bigEndian: port))
  }
}
