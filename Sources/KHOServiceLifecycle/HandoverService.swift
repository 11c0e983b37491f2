import Dispatch
import KHO
import KHORuntime
import KHOServiceControl
import Logging
import Metrics
import ServiceLifecycle
import Synchronization
import UnixSignals

#if canImport(Glibc)
  import Glibc
#endif

/// The handover runtime as a `Service` of swift-service-lifecycle's
/// `ServiceGroup`: it owns the control mount, turns SIGHUP (what
/// `systemctl reload` sends through `ExecReload=kill -HUP $MAINPID`, or a
/// `kho exec` on the mount) into a handover to the next image, and turns
/// graceful shutdown into a clean exit (the mount unmounted).
///
/// Boot it first and take the listening sockets and the memory the
/// previous image left; report ready, and only then read that memory (an
/// overlapped predecessor serves and writes it until it lets go); register
/// the state's notifiers; then run it beside the services that use them:
///
/// ```swift
/// let kho = try HandoverService.boot(
///   KHOOptions(arenaSize: 256 << 20, scratchSize: 16 << 20),
///   configuration: .init(controlMountPoint: "/run/my-service/kho"), logger: logger)
/// let listener = try kho.listeningSocket(named: "http") { try bindHTTPListener(port: 8080) }
/// let claimed = MyState.claim(from: kho.runtime.kho)   // the range, not read yet
/// guard await kho.ready() else { exit(1) }             // the previous image let go
/// let state = try MyState.attach(claimed) ?? MyState.fresh(in: kho.runtime.kho)
/// try state.register(with: kho.runtime.kho)            // DUMP and FREEZE from now on
/// let app = MyHTTPService(listeningSocket: listener, state: state)
/// kho.onStopServing { app.pauseAccepting() }
/// kho.onResumeServing { app.resumeAccepting() }
/// let group = ServiceGroup(
///   configuration: .init(
///     services: [
///       .init(service: kho, successTerminationBehavior: .gracefullyShutdownGroup),
///       .init(service: app),
///     ],
///     gracefulShutdownSignals: [.sigterm], logger: logger))
/// try await group.run()
/// ```
///
/// A service with no handed-over state to read may skip ``ready(status:)``:
/// ``run()`` reports ready itself. Handovers start only once `run()` has
/// reported ready and mounted the control files, so a state registered
/// before `run()` is always described to the next image.
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
    /// The signal that starts a handover; nil: none. While a handover
    /// runs it is ignored, and the next image starts with it ignored until
    /// its ``HandoverService/ready(status:)`` traps it: a reload asked for
    /// meanwhile is dropped, never the end of the image that boots.
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
  /// The handover's figures; a service records its own store's beside
  /// them with ``HandoverMetrics/recordStore(items:bytes:evictions:damaged:)``.
  public let metrics: HandoverMetrics
  private let configuration: Configuration
  private let logger: Logger
  private let state = Mutex(State())
  /// The reload signal's action before a handover ignored it.
  private let savedReloadAction = Mutex<sigaction?>(nil)
  /// Where what blocks runs, not on the concurrency pool: handovers the
  /// reload signal starts (a drain, the next image's start-up), and
  /// waiting in ``ready(status:)`` for an overlapped predecessor to let go.
  private let handoverQueue = DispatchQueue(label: "kho.handover")

  private struct State {
    var stopServing: [@Sendable () -> Void] = []
    var resumeServing: [@Sendable () -> Void] = []
    var control: ServiceControl?
    var committed: CheckedContinuation<Void, Never>?
    var didCommit = false
    var isServing = false
    var servingWaiters: [CheckedContinuation<Void, Never>] = []
    var readiness = Readiness.notReported
    var reloads: UnixSignalsSequence?
  }

  /// Whether ``ready(status:)`` ran: once, whoever calls it first.
  private enum Readiness {
    case notReported
    case reporting(waiters: [CheckedContinuation<Bool, Never>])
    case reported(Bool)
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
  ///
  /// An fd handed over under `name` that is not a listening socket is not
  /// trusted (logged, and left alone: whatever it is, it is not ours to
  /// close); `bind` makes the listener instead.
  public func listeningSocket(named name: String, orBind bind: () throws -> Int32) throws -> Int32 {
    let fd: Int32
    if let inherited = runtime.inherited[name], Self.isListening(inherited) {
      fd = inherited
    } else {
      if let inherited = runtime.inherited[name] {
        logger.error(
          "kho: the fd \(inherited) handed over as \(name) is not a listening socket; binding anew")
      }
      fd = try bind()
    }
    try runtime.register(fd, name: name)
    return fd
  }

  /// Whether `fd` is a socket that listens (`SO_ACCEPTCONN`).
  private static func isListening(_ fd: Int32) -> Bool {
    var accepting: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length) == 0 && accepting == 1
  }

  /// Runs `body` before a handover: stop accepting on the handed-over
  /// listeners (connections wait in the backlog for the next image), and
  /// drain the open connections (each gets its last response, then is
  /// closed, so that its client reconnects to the next image). `body` may
  /// block for as long as the drain takes: it runs on the control mount's
  /// thread or on a queue of the service's own, never on the concurrency
  /// pool or an event loop. The handed-over state itself stops changing at
  /// its notifier's FREEZE.
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

  /// Declares this image prepared, once, as
  /// `HandoverRuntime/ready(status:)` does: memory nobody claimed is
  /// returned; after an overlapped handover, the previous image (which
  /// still serves) is told, and this returns once it has frozen and let
  /// go; systemd is told `READY=1`. The reload signal is trapped first, so
  /// that from then on it never takes its default action (ending the
  /// process); the handover it asks for starts once ``run()`` waits.
  ///
  /// Call it between claiming the handed-over memory and reading it, when
  /// the service takes its state before the group runs; ``run()`` calls it
  /// otherwise. Later calls return the first one's answer.
  ///
  /// - Parameter status: The `STATUS=` line for systemd.
  /// - Returns: `false` when the previous image aborted the handover: this
  ///   image must then exit without serving (``run()`` throws
  ///   ``HandoverServiceError/handoverAborted``).
  public func ready(status: String? = "serving") async -> Bool {
    let first = state.withLock { shared -> Bool in
      guard case .notReported = shared.readiness else { return false }
      shared.readiness = .reporting(waiters: [])
      return true
    }
    guard first else {
      return await withCheckedContinuation { continuation in
        let now = state.withLock { shared -> Bool? in
          switch shared.readiness {
          case .reported(let ready): return ready
          case .reporting(var waiters):
            waiters.append(continuation)
            shared.readiness = .reporting(waiters: waiters)
            return nil
          case .notReported: preconditionFailure("readiness went back to not reported")
          }
        }
        if let now { continuation.resume(returning: now) }
      }
    }
    // Trapping before reporting ready: systemd sends `ExecReload`'s SIGHUP
    // only after READY=1.
    let reloads: UnixSignalsSequence? =
      if let signal = configuration.reloadSignal {
        await UnixSignalsSequence(trapping: signal)
      } else { nil }
    // Off the concurrency pool: after an overlapped handover this waits
    // until the predecessor has drained and frozen.
    let ready = await withCheckedContinuation { continuation in
      handoverQueue.async { [runtime] in
        continuation.resume(returning: runtime.ready(status: status))
      }
    }
    let waiters = state.withLock { shared -> [CheckedContinuation<Bool, Never>] in
      shared.reloads = reloads
      defer { shared.readiness = .reported(ready) }
      guard case .reporting(let waiters) = shared.readiness else { return [] }
      return waiters
    }
    for waiter in waiters { waiter.resume(returning: ready) }
    return ready
  }

  /// Reports ready (unless ``ready(status:)`` did), mounts the control
  /// files, then waits: for the reload signal (a handover), for a
  /// committed handover (returns), or for graceful shutdown (unmounts,
  /// returns).
  ///
  /// - Throws: ``HandoverServiceError/handoverAborted`` when the previous
  ///   image aborted the handover before this one served; the control
  ///   mount's errors.
  public func run() async throws {
    guard await ready() else { throw HandoverServiceError.handoverAborted }
    // After ready: until then an overlapped predecessor still serves the
    // mount's connection, and the handover may yet roll back to it.
    if let mountPoint = configuration.controlMountPoint {
      let control = try ServiceControl.start(
        runtime: runtime, mountPoint: mountPoint,
        hooks: .init(
          stopServing: { [self] in stopServing() }, resumeServing: { [self] in resumeServing() },
          committed: { [self] in commit() }), logger: logger)
      state.withLock { $0.control = control }
    }
    metrics.recordBoot()
    let (reloads, waiters) = state.withLock { shared in
      shared.isServing = true
      defer { shared.servingWaiters = [] }
      return (shared.reloads, shared.servingWaiters)
    }
    for waiter in waiters { waiter.resume() }
    await withTaskGroup(of: Void.self) { group in
      if let reloads {
        group.addTask { [self] in
          for await _ in reloads.cancelOnGracefulShutdown() {
            if case .failure(let error) = await handOverOffThePool() {
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

  /// ``handOver()`` on the service's handover queue: the hooks may drain
  /// for a while, and an overlapped handover waits for the next image.
  private func handOverOffThePool() async -> Result<Bool, HandoverFailure> {
    await withCheckedContinuation { continuation in
      handoverQueue.async { [self] in
        continuation.resume(returning: Result { () throws(HandoverFailure) in try handOver() })
      }
    }
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
    ignoreReloadSignal()
    for body in state.withLock({ $0.stopServing }) { body() }
  }

  private func resumeServing() {
    for body in state.withLock({ $0.resumeServing }) { body() }
    restoreReloadSignal()
  }

  /// Ignores the reload signal while a handover runs. The next image
  /// inherits an ignored signal (a caught one is reset to its default
  /// action at exec and at spawn): a reload asked for while it boots is
  /// then dropped, where the default action would end it with the
  /// control mount in its hands, until its ``ready(status:)`` traps it.
  private func ignoreReloadSignal() {
    guard let signal = configuration.reloadSignal?.rawValue else { return }
    var ignore = sigaction()
    ignore.__sigaction_handler.sa_handler = SIG_IGN
    var previous = sigaction()
    guard sigaction(signal, &ignore, &previous) == 0 else { return }
    savedReloadAction.withLock { saved in
      if saved == nil { saved = previous }
    }
  }

  /// After a handover, failed or committed: the reload signal's handler
  /// again.
  private func restoreReloadSignal() {
    guard let signal = configuration.reloadSignal?.rawValue,
      var previous = savedReloadAction.withLock({ saved in
        defer { saved = nil }
        return saved
      })
    else { return }
    sigaction(signal, &previous, nil)
  }

  private func commit() {
    // The next image took its dispositions at its spawn; this one, which
    // ends now, has its handler back, as after a failure.
    restoreReloadSignal()
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

/// Why ``HandoverService/run()`` did not serve.
public enum HandoverServiceError: Error, Sendable, CustomStringConvertible {
  /// The previous image aborted the handover while this one prepared: it
  /// goes on serving, and this image must exit without touching the
  /// handed-over state.
  case handoverAborted

  /// The error, for a log line.
  public var description: String {
    switch self {
    case .handoverAborted: "the previous image aborted the handover; this image does not serve"
    }
  }
}
