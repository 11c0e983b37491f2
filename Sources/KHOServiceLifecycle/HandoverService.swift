import KHO
import KHORuntime
import KHOServiceControl
import Logging
import Metrics
import ServiceLifecycle
import Synchronization
import UnixSignals

/// The handover runtime as a `Service` of swift-service-lifecycle's
/// `ServiceGroup`: it owns the control mount, turns SIGHUP (what
/// `systemctl reload` sends through `ExecReload=kill -HUP $MAINPID`, or a
/// `kho exec` on the mount) into a handover to the next image, and turns
/// graceful shutdown into a clean exit (the mount unmounted).
///
/// Boot it first, take the state and the listening sockets the previous
/// image left, then run it beside the services that use them:
///
/// ```swift
/// let kho = try HandoverService.boot(
///   KHOOptions(arenaSize: 256 << 20, scratchSize: 16 << 20),
///   configuration: .init(controlMountPoint: "/run/my-service/kho"), logger: logger)
/// let listener = try kho.listeningSocket(named: "http") { try bindHTTPListener(port: 8080) }
/// let app = MyHTTPService(listeningSocket: listener, arena: kho.runtime.kho)
/// kho.onStopServing { app.pauseAccepting() }
/// let group = ServiceGroup(
///   configuration: .init(services: [.init(service: kho), .init(service: app)],
///     gracefulShutdownSignals: [.sigterm], logger: logger))
/// try await group.run()
/// ```
///
/// When a handover commits (overlapped: the next image serves), `run()`
/// returns, so the group ends and the process exits; when one fails, the
/// hooks of ``onResumeServing(_:)`` run and the service goes on with
/// everything it had.
public final class HandoverService: Service, Sendable {
  /// How the service hands over.
  public struct Configuration: Sendable {
    /// Where the control files are mounted; nil: no control mount (SIGHUP
    /// still hands over).
    public var controlMountPoint: String?
    /// The mode of a handover that SIGHUP starts.
    public var mode: HandoverMode
    /// The signal that starts a handover; nil: none.
    public var reloadSignal: UnixSignal?
    /// The image to hand over to; by default this executable again
    /// (`/proc/self/exe`, with the same arguments), which after a package
    /// upgrade is the new version.
    public var nextImage: @Sendable () -> NextImage

    /// A configuration; every parameter has the default a systemd service wants.
    public init(
      controlMountPoint: String? = nil, mode: HandoverMode = .overlapped(),
      reloadSignal: UnixSignal? = .sighup,
      nextImage: @escaping @Sendable () -> NextImage = { .current() }
    ) {
      self.controlMountPoint = controlMountPoint
      self.mode = mode
      self.reloadSignal = reloadSignal
      self.nextImage = nextImage
    }
  }

  /// The runtime: `runtime.kho` is the KHO core (arena, allocator,
  /// notifiers, incoming state).
  public let runtime: HandoverRuntime
  private let configuration: Configuration
  private let logger: Logger
  private let metrics: HandoverMetrics
  private let state = Mutex(State())

  private struct State {
    var stopServing: [@Sendable () -> Void] = []
    var resumeServing: [@Sendable () -> Void] = []
    var control: ServiceControl?
    var committed: CheckedContinuation<Void, Never>?
    var didCommit = false
    var isServing = false
    var servingWaiters: [CheckedContinuation<Void, Never>] = []
  }

  /// Wraps a booted runtime.
  public init(runtime: HandoverRuntime, configuration: Configuration, logger: Logger) {
    self.runtime = runtime
    self.configuration = configuration
    self.logger = logger
    self.metrics = HandoverMetrics(kho: runtime.kho)
  }

  /// Boots the runtime (`HandoverRuntime/boot(_:logger:)`: from the
  /// previous image's handover, after a crash from the arena a keeper held,
  /// or cold) and wraps it.
  public static func boot(
    _ options: KHOOptions, configuration: Configuration = .init(), logger: Logger
  ) throws(KHOBootError) -> HandoverService {
    HandoverService(
      runtime: try HandoverRuntime.boot(options, logger: logger), configuration: configuration,
      logger: logger)
  }

  /// The listening socket handed over as `name`, else the one `bind`
  /// makes; either way registered, so that the next image finds it under
  /// the same name. Hand it to the other services of the group (NIO's
  /// `ServerBootstrap.withBoundSocket(_:)` takes it).
  public func listeningSocket(named name: String, orBind bind: () throws -> Int32) throws -> Int32 {
    let fd = try runtime.inherited[name] ?? bind()
    try runtime.register(fd, name: name)
    return fd
  }

  /// Runs `body` before a handover: stop accepting on the handed-over
  /// listeners (connections wait in the backlog for the next image) and
  /// stop changing handed-over state.
  public func onStopServing(_ body: @escaping @Sendable () -> Void) {
    state.withLock { $0.stopServing.append(body) }
  }

  /// Runs `body` after a failed handover: accept and change state again.
  public func onResumeServing(_ body: @escaping @Sendable () -> Void) {
    state.withLock { $0.resumeServing.append(body) }
  }

  /// Hands over to the configured next image now, as SIGHUP does. Returns
  /// `true` when the next image serves (overlapped; this image must end,
  /// and `run()` returns); throws, and everything goes on, when the
  /// handover fails.
  @discardableResult
  public func handOver() throws(HandoverFailure) -> Bool {
    let image = configuration.nextImage()
    let control = state.withLock { $0.control }
    let start = ContinuousClock.now
    let outcome: HandoverRuntime.Outcome
    do throws(HandoverFailure) {
      if let control {
        outcome = try control.handOver(to: image, mode: configuration.mode)
      } else {
        stopServing()
        do throws(HandoverFailure) {
          outcome = try runtime.handover(to: image, mode: configuration.mode)
        } catch {
          resumeServing()
          throw error
        }
      }
    } catch {
      metrics.recordFailure()
      throw error
    }
    metrics.recordHandover(ContinuousClock.now - start)
    guard case .committed(let pid) = outcome else { return false }
    logger.info("kho: pid \(pid) serves; this image ends")
    commit()
    return true
  }

  /// Mounts the control files, reports ready, then waits: for the reload
  /// signal (a handover), for a committed handover (returns), or for
  /// graceful shutdown (unmounts, returns).
  public func run() async throws {
    if let mountPoint = configuration.controlMountPoint {
      let control = try ServiceControl.start(
        runtime: runtime, mountPoint: mountPoint,
        hooks: .init(
          stopServing: { [self] in stopServing() }, resumeServing: { [self] in resumeServing() },
          committed: { [self] in commit() }), logger: logger)
      state.withLock { $0.control = control }
    }
    // Trapping before reporting ready: a SIGHUP from then on hands over,
    // and never takes the default action (ending the process).
    let reloads: UnixSignalsSequence? =
      if let signal = configuration.reloadSignal {
        await UnixSignalsSequence(trapping: signal)
      } else { nil }
    _ = runtime.ready(status: "serving")
    metrics.recordBoot()
    let waiters = state.withLock { shared in
      shared.isServing = true
      defer { shared.servingWaiters = [] }
      return shared.servingWaiters
    }
    for waiter in waiters { waiter.resume() }
    await withTaskGroup(of: Void.self) { group in
      if let reloads {
        group.addTask { [self] in
          for await _ in reloads.cancelOnGracefulShutdown() {
            do { try handOver() } catch {
              logger.error("kho: handover failed, still serving: \(error)")
            }
            if state.withLock({ $0.didCommit }) { return }
          }
        }
      }
      group.addTask { [self] in
        await cancelWhenGracefulShutdown { await self.waitForCommit() }
      }
      // Whichever ends first (a commit, or graceful shutdown) ends both.
      await group.next()
      group.cancelAll()
    }
    let control = state.withLock { shared -> ServiceControl? in
      defer { shared.control = nil }
      return shared.didCommit ? nil : shared.control
    }
    // After a commit the mount is the next image's: leave it alone.
    control?.unmount()
  }

  /// Returns once ``run()`` has mounted the control files and reported
  /// ready: from then on an operator's `kho exec` or a SIGHUP hands over.
  public func serving() async {
    await withCheckedContinuation { continuation in
      let now = state.withLock { shared -> Bool in
        if shared.isServing { return true }
        shared.servingWaiters.append(continuation)
        return false
      }
      if now { continuation.resume() }
    }
  }

  private func stopServing() {
    for body in state.withLock({ $0.stopServing }) { body() }
  }

  private func resumeServing() {
    for body in state.withLock({ $0.resumeServing }) { body() }
  }

  private func commit() {
    let waiter = state.withLock { shared -> CheckedContinuation<Void, Never>? in
      shared.didCommit = true
      defer { shared.committed = nil }
      return shared.committed
    }
    waiter?.resume()
  }

  private func waitForCommit() async {
    await withTaskCancellationHandler {
      await withCheckedContinuation { continuation in
        let resumeNow = state.withLock { shared -> Bool in
          if shared.didCommit || Task.isCancelled { return true }
          shared.committed = continuation
          return false
        }
        if resumeNow { continuation.resume() }
      }
    } onCancel: {
      let waiter = state.withLock { shared -> CheckedContinuation<Void, Never>? in
        defer { shared.committed = nil }
        return shared.committed
      }
      waiter?.resume()
    }
  }
}
