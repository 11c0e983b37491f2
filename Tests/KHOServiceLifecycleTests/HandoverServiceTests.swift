import FDT
import KHO
import KHORuntime
import KHOServiceLifecycle
import Logging
import ServiceLifecycle
import Synchronization
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// A service of the group that runs until graceful shutdown.
struct IdleService: Service {
  func run() async throws {
    try? await gracefulShutdown()
  }
}

@Suite(.serialized) struct HandoverServiceTests {
  let options = KHOOptions(arenaSize: 8 << 20, scratchSize: 1 << 20)
  let logger = Logger(label: "test")

  /// A service that SIGHUP hands over, overlapped, to a next image that
  /// reports ready, waits for the commit, and exits.
  func bootHandingOverOnSIGHUP() throws -> HandoverService {
    let script = "printf 'READY\\n' >&$KHO_READY_FD; read -r go <&$KHO_COMMIT_FD; exit 0"
    return try HandoverService.boot(
      options,
      configuration: .init(
        mode: .overlapped(), reloadSignal: .sighup,
        nextImage: { NextImage(path: "/bin/bash", arguments: ["bash", "-c", script]) }),
      logger: logger)
  }

  func temporaryDirectory() -> String {
    var template = Array("/tmp/kho-lifecycle-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
  }

  @Test func gracefulShutdownUnmountsAndReturns() async throws {
    let directory = temporaryDirectory()
    defer { rmdir(directory) }
    let kho = try HandoverService.boot(
      options, configuration: .init(controlMountPoint: directory, reloadSignal: nil),
      logger: logger)
    try await serveThenShutDown(kho, mountedAt: directory)
  }

  /// Runs `kho` in a group until it serves (its control files mounted at
  /// `directory`), then shuts the group down gracefully: unmounted after.
  func serveThenShutDown(_ kho: HandoverService, mountedAt directory: String) async throws {
    let group = ServiceGroup(
      configuration: .init(
        services: [.init(service: kho), .init(service: IdleService())], logger: logger))
    async let running: Void = group.run()
    await kho.serving()
    #expect(access(directory + "/kernel/kho/active", F_OK) == 0)
    await group.triggerGracefulShutdown()
    try await running
    // Unmounted: the directory is empty and no longer a mount.
    #expect(access(directory + "/kernel/kho/active", F_OK) != 0)
  }

  @Test func aFailedHandoverResumesAndKeepsTheState() throws {
    let kho = try HandoverService.boot(
      options,
      configuration: .init(
        mode: .overlapped(), reloadSignal: nil,
        nextImage: { NextImage(path: "/nonexistent/next-image") }), logger: logger)
    let calls = Mutex<[String]>([])
    kho.onStopServing { calls.withLock { $0.append("stop") } }
    kho.onResumeServing { calls.withLock { $0.append("resume") } }
    #expect(throws: HandoverFailure.self) { try kho.handOver() }
    #expect(calls.withLock { $0 } == ["stop", "resume"])
    #expect(!kho.runtime.kho.outgoing.isActive)
  }

  @Test func aCommittedHandoverEndsRun() async throws {
    // The next image: bash reporting itself prepared, then waiting for GO.
    let script = "printf 'READY\\n' >&$KHO_READY_FD; read -r go <&$KHO_COMMIT_FD; exit 0"
    let kho = try HandoverService.boot(
      options,
      configuration: .init(
        mode: .overlapped(), reloadSignal: nil,
        nextImage: { NextImage(path: "/bin/bash", arguments: ["bash", "-c", script]) }),
      logger: logger)
    #expect(try kho.handOver())
    // run() sees the commit and returns at once, without a shutdown.
    try await kho.run()
  }

  @Test func sighupHandsOver() async throws {
    let kho = try bootHandingOverOnSIGHUP()
    async let running: Void = kho.run()
    await kho.serving()
    kill(getpid(), SIGHUP)
    // The handover commits, and run() returns: the next image serves.
    try await running
    #expect(kho.runtime.kho.outgoing.isFrozen)
  }

  @Test func listeningSocketsAreRegisteredForTheNextImage() throws {
    let kho = try HandoverService.boot(options, logger: logger)
    var pipe: [Int32] = [-1, -1]
    #expect(Glibc.pipe(&pipe) == 0)
    defer { for fd in pipe { close(fd) } }
    let fd = try kho.listeningSocket(named: "http") { pipe[0] }
    #expect(fd == pipe[0])
    #expect(kho.runtime.registered["http"] == pipe[0])
  }

  /// A listening TCP socket on 127.0.0.1, any port.
  func listener() -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    precondition(bound == 0 && listen(fd, 16) == 0, "cannot listen: \(errno)")
    return fd
  }

  @Test func anInheritedListenerIsTakenAsItIs() throws {
    let inherited = listener()
    defer { close(inherited) }
    setenv(NamedFileDescriptors.environmentName, "http:\(inherited)", 1)
    let kho = try HandoverService.boot(options, logger: logger)
    let fd = try kho.listeningSocket(named: "http") {
      Issue.record("bound although a listener was handed over")
      return -1
    }
    #expect(fd == inherited)
    #expect(kho.runtime.registered["http"] == inherited)
  }

  @Test func anInheritedFDThatDoesNotListenIsNotTrusted() throws {
    var pipe: [Int32] = [-1, -1]
    #expect(Glibc.pipe(&pipe) == 0)
    defer { for fd in pipe { close(fd) } }
    setenv(NamedFileDescriptors.environmentName, "http:\(pipe[0])", 1)
    let kho = try HandoverService.boot(options, logger: logger)
    let bound = listener()
    defer { close(bound) }
    let fd = try kho.listeningSocket(named: "http") { bound }
    #expect(fd == bound)
    #expect(kho.runtime.registered["http"] == bound)
    // Left open: whatever it is, it is not the service's to close.
    #expect(fcntl(pipe[0], F_GETFD) >= 0)
  }

  @Test func readyIsReportedOnceWhoeverAsks() async throws {
    let kho = try HandoverService.boot(
      options, configuration: .init(reloadSignal: nil), logger: logger)
    async let first = kho.ready()
    async let second = kho.ready()
    #expect(await [first, second] == [true, true])
    #expect(await kho.ready())
  }

  @Test func readyBeforeRunThenRunServesAndShutsDown() async throws {
    let directory = temporaryDirectory()
    defer { rmdir(directory) }
    let kho = try HandoverService.boot(
      options, configuration: .init(controlMountPoint: directory, reloadSignal: nil),
      logger: logger)
    #expect(await kho.ready())
    // No handover can start yet: the mount is not there.
    #expect(access(directory + "/kernel/kho/active", F_OK) != 0)
    try await serveThenShutDown(kho, mountedAt: directory)
  }

  @Test func stateRegisteredAfterReadyIsHandedOverBySIGHUP() async throws {
    let kho = try bootHandingOverOnSIGHUP()
    let calls = Mutex<[String]>([])
    kho.onStopServing { calls.withLock { $0.append("stop") } }
    // The pattern of a service with state: ready, then take the state and
    // register it, then run; the SIGHUP trapped by ready() waits for run().
    #expect(await kho.ready())
    let pages = try kho.runtime.kho.allocator.allocate(bytes: 4096)
    try kho.runtime.kho.outgoing.register(
      KHONotifier(
        name: "sessions",
        dump: { writer in
          try writer.beginNode("sessions")
          try writer.property("compatible", string: "test-sessions-v1")
          try writer.property(
            "mem", native: [pages.lowerBound, pages.upperBound - pages.lowerBound])
          try writer.endNode()
        }, freeze: { calls.withLock { $0.append("freeze") } }))
    kill(getpid(), SIGHUP)
    try await kho.run()
    #expect(calls.withLock { $0 } == ["stop", "freeze"])
    let dt = try #require(kho.runtime.kho.outgoing.dt)
    #expect(dt.node(atPath: "/sessions") != nil)
  }

  /// Whether `signal`'s action in this process is SIG_IGN.
  func isIgnored(_ signal: Int32) -> Bool {
    var current = sigaction()
    sigaction(signal, nil, &current)
    return unsafeBitCast(current.__sigaction_handler.sa_handler, to: Int.self) == 1
  }

  @Test func theReloadSignalIsIgnoredDuringAHandoverAndByTheNextImage() async throws {
    // The next image records the signals it was started with ignored.
    let directory = temporaryDirectory()
    let report = directory + "/ignored"
    defer {
      unlink(report)
      rmdir(directory)
    }
    let script =
      "grep SigIgn /proc/$$/status > \(report); printf 'READY\\n' >&$KHO_READY_FD; read -r go <&$KHO_COMMIT_FD"
    let kho = try HandoverService.boot(
      options,
      configuration: .init(
        mode: .overlapped(), reloadSignal: .sighup,
        nextImage: { NextImage(path: "/bin/bash", arguments: ["bash", "-c", script]) }),
      logger: logger)
    let ignoredWhileStopping = Mutex<Bool?>(nil)
    kho.onStopServing { ignoredWhileStopping.withLock { $0 = isIgnored(SIGHUP) } }
    #expect(await kho.ready())
    #expect(!isIgnored(SIGHUP))  // trapped
    #expect(try kho.handOver())
    #expect(ignoredWhileStopping.withLock { $0 } == true)
    #expect(!isIgnored(SIGHUP))  // given back once committed
    let line = try #require(String(validatingCString: try contents(of: report)))
    let mask = try #require(
      UInt64(line.split(whereSeparator: \.isWhitespace).last ?? "", radix: 16))
    #expect(mask & (1 << (UInt64(SIGHUP) - 1)) != 0)
  }

  @Test func aFailedHandoverGivesTheReloadSignalItsHandlerBack() async throws {
    let kho = try HandoverService.boot(
      options,
      configuration: .init(
        mode: .overlapped(), reloadSignal: .sighup,
        nextImage: { NextImage(path: "/nonexistent/next-image") }), logger: logger)
    #expect(await kho.ready())
    #expect(throws: HandoverFailure.self) { try kho.handOver() }
    #expect(!isIgnored(SIGHUP))
  }

  /// The bytes of the file at `path`, NUL-terminated.
  func contents(of path: String) throws -> [CChar] {
    let fd = open(path, O_RDONLY)
    try #require(fd >= 0)
    defer { close(fd) }
    var bytes = [CChar](repeating: 0, count: 256)
    let count = read(fd, &bytes, bytes.count - 1)
    try #require(count > 0)
    return Array(bytes[..<count]) + [0]
  }
}
