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
    let script = "printf 'READY\\n' >&$KHO_READY_FD; read -r go <&$KHO_COMMIT_FD; exit 0"
    let kho = try HandoverService.boot(
      options,
      configuration: .init(
        mode: .overlapped(), reloadSignal: .sighup,
        nextImage: { NextImage(path: "/bin/bash", arguments: ["bash", "-c", script]) }),
      logger: logger)
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
}
