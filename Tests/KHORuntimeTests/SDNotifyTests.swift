import KHOSystem
import Testing

@testable import KHORuntime

#if canImport(Glibc)
  import Glibc
#endif

/// A real Unix datagram socket standing for the service manager.
final class FakeServiceManager {
  let path: String
  let fd: Int32

  init() throws {
    path = "/tmp/kho-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
      for (i, c) in path.utf8.enumerated() { raw[i] = c }
    }
    let rc = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    #expect(rc == 0)
  }

  deinit {
    close(fd)
    unlink(path)
  }

  /// The next datagram (non-blocking: the sender already sent it), and
  /// the fd it carried, if any.
  func receive() -> (message: String, fd: Int32)? {
    var buffer = [UInt8](repeating: 0, count: 4096)
    let received = buffer.withUnsafeMutableBytes {
      try? FileDescriptor(rawValue: fd).receiveMessage(into: $0, flags: Int32(MSG_DONTWAIT))
    }
    guard let received else { return nil }
    return (
      String(decoding: buffer[..<received.byteCount], as: UTF8.self),
      received.descriptors.first?.rawValue ?? -1
    )
  }
}

@Suite struct SDNotifyTests {
  @Test func sendsMessagesInOrder() throws {
    let manager = try FakeServiceManager()
    let notifier = SDNotifier(socketPath: manager.path)
    try notifier.reloading(status: "handing over")
    try notifier.mainPID(4242)
    try notifier.ready(status: "serving")
    try notifier.status("idle")

    let first = try #require(manager.receive())
    let lines = first.message.split(separator: "\n")
    #expect(lines.first == "RELOADING=1")
    #expect(lines.contains { $0.hasPrefix("MONOTONIC_USEC=") && UInt64($0.dropFirst(15)) != nil })
    #expect(lines.last == "STATUS=handing over")
    #expect(manager.receive()?.message == "MAINPID=4242\nREADY=1")
    #expect(manager.receive()?.message == "READY=1\nSTATUS=serving")
    #expect(manager.receive()?.message == "STATUS=idle")
    #expect(manager.receive() == nil)
  }

  @Test func storesAnFDWithItsName() throws {
    let manager = try FakeServiceManager()
    let notifier = SDNotifier(socketPath: manager.path)
    let pipe = try FileDescriptor.pipe()
    let fds = [pipe.read.rawValue, pipe.write.rawValue]
    defer {
      close(fds[0])
      close(fds[1])
    }
    try notifier.storeFD(fds[0], name: "arena")
    let got = try #require(manager.receive())
    #expect(got.message == "FDSTORE=1\nFDNAME=arena")
    #expect(got.fd >= 0)
    // The received fd is the same pipe: what goes into one end comes out of it.
    #expect(write(fds[1], "x", 1) == 1)
    var byte: UInt8 = 0
    #expect(read(got.fd, &byte, 1) == 1 && byte == UInt8(ascii: "x"))
    close(got.fd)
  }

  @Test func silentWithoutNotifySocket() throws {
    let notifier = SDNotifier(socketPath: nil)
    #expect(!notifier.isEnabled)
    try notifier.ready()
  }

  @Test func failsWithErrnoWhenNobodyListens() {
    let notifier = SDNotifier(socketPath: "/tmp/kho-nobody-listens-\(getpid())")
    #expect(throws: SystemCallError.self) { try notifier.ready() }
  }
}

@Suite struct NamedFileDescriptorsTests {
  @Test func registersAndRoundTripsThroughTheEnvironmentValue() throws {
    let first = dup(0)
    let second = dup(2)
    defer {
      close(first)
      close(second)
    }
    var fds = NamedFileDescriptors()
    try fds.register(first, name: "stdin")
    try fds.register(second, name: "log.err")
    #expect(fds.environmentValue == "stdin:\(first),log.err:\(second)")
    #expect(try NamedFileDescriptors(parsing: fds.environmentValue) == fds)
    #expect(fds["log.err"] == second)
    #expect(fds.unregister("stdin") == first)
    #expect(fds["stdin"] == nil)
  }

  @Test func refusesBadNamesDuplicatesAndClosedFDs() {
    var fds = NamedFileDescriptors()
    #expect(throws: NamedFileDescriptors.Failure.badName("a:b")) {
      try fds.register(0, name: "a:b")
    }
    #expect(throws: NamedFileDescriptors.Failure.badName("")) { try fds.register(0, name: "") }
    #expect(throws: NamedFileDescriptors.Failure.notOpen(name: "x", fd: 999)) {
      try fds.register(999, name: "x")
    }
    #expect(throws: Never.self) { try fds.register(1, name: "out") }
    #expect(throws: NamedFileDescriptors.Failure.duplicateName("out")) {
      try fds.register(2, name: "out")
    }
  }

  /// Standard input, output and error are never handed over by name.
  @Test(arguments: ["x", "a:1,", "a:b", "a:-1", ":1", "a:1:2", "a:0", "a:1", "a:2", "a:999"])
  func refusesMalformedValues(_ value: String) {
    #expect(throws: NamedFileDescriptors.Failure.self) { try NamedFileDescriptors(parsing: value) }
  }
}
