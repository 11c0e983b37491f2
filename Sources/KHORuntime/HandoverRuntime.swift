import KHO
import KHOSystem
import Logging
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// How the next image takes over.
public enum HandoverMode: Sendable, Equatable, CustomStringConvertible {
  /// `execve` in this process, like `kexec -e`: the PID stays.
  case inPlace
  /// Spawn the next image, wait until it reports ready (or give up after
  /// `timeout`), then exit; on failure roll back and go on serving.
  case overlapped(timeout: Duration = .seconds(60))

  public var description: String {
    switch self {
    case .inPlace: return "in-place"
    case .overlapped(let t): return "overlapped (timeout \(t))"
    }
  }
}

/// Why a handover did not happen. In every case KHO was aborted and this
/// image goes on serving with all its state.
public enum HandoverFailure: Error, Sendable, CustomStringConvertible {
  /// Serializing the subsystems failed.
  case serialize(SerializeError)
  /// Leaving the handover in scratch failed.
  case load(KHOLoadError)
  /// A subsystem refused to FREEZE; it and every other one unfroze.
  case freeze(SerializeError)
  /// `execve` or `posix_spawn` failed (missing binary, no permission...).
  case launch(SystemCallError)
  /// The next image exited, crashed or broke the handshake before ready.
  case successorFailed(pid: pid_t, reason: String)
  /// The next image did not report ready in time; it was killed.
  case timedOut(pid: pid_t, after: Duration)
  /// A handover is already running.
  case busy

  public var description: String {
    switch self {
    case .serialize(let e): return "serialize failed: \(e)"
    case .load(let e): return "load failed: \(e)"
    case .freeze(let e): return "freeze failed: \(e)"
    case .launch(let e): return "starting the next image failed: \(e)"
    case .successorFailed(let pid, let reason):
      return "the next image (pid \(pid)) failed: \(reason)"
    case .timedOut(let pid, let after):
      return "the next image (pid \(pid)) was not ready within \(after); killed"
    case .busy: return "a handover is already in progress"
    }
  }
}

/// The handover runtime of a service: boots KHO (cold or from the previous
/// image), carries named fds across, performs the handover in place or
/// overlapped with rollback, and keeps systemd informed.
///
/// ```swift
/// let runtime = try HandoverRuntime.boot(KHOOptions(arenaSize: 1 << 30, scratchSize: 64 << 20))
/// let listener = runtime.inherited["listen"] ?? makeListeningSocket()
/// try runtime.register(listener, name: "listen")
/// // ... subsystems claim their memory from runtime.kho.incoming ...
/// runtime.ready(status: "serving")
/// // later, when asked to upgrade:
/// stopServing()
/// do {
///   if case .committed = try runtime.handover(to: NextImage(path: "/usr/bin/my-service-v2"), mode: .overlapped()) {
///     exit(0)
///   }
/// } catch {
///   resumeServing()  // nothing was lost
/// }
/// ```
public final class HandoverRuntime: Sendable {
  /// The KHO core: arena, allocator, outgoing and incoming halves.
  public let kho: KHO
  /// The fds the previous image handed over by name (empty after a cold start).
  public let inherited: NamedFileDescriptors
  /// Fds open at boot that a handover offered without a usable name: after
  /// a KHO boot, or when `KHO_FDS` was set but could not be parsed, every
  /// open fd above 2 that is not the arena, the handshake or a named one
  /// (sorted); empty after a plain cold start. A service
  /// looks here for what it would have found by name (a listener it can
  /// recognise by its address) and closes what it cannot use: an unserved
  /// FUSE connection left open would hang every caller of its mount.
  public let strayInherited: [Int32]
  /// sd_notify, a no-op outside systemd.
  public let notifier: SDNotifier
  private let logger: Logger
  private let named: Mutex<NamedFileDescriptors>
  private let handshake: Mutex<(ready: Int32, commit: Int32)?>
  private let inProgress = Atomic<Bool>(false)
  /// Descriptors offered for the next image (see ``offer(_:)``).
  private let outgoingParcel = Mutex<DescriptorParcel?>(nil)
  /// Descriptors the previous image handed over (see ``takeParcel()``).
  private let incomingParcel: Mutex<DescriptorParcel?>

  private init(
    kho: KHO, inherited: NamedFileDescriptors, strayInherited: [Int32],
    handshake: (Int32, Int32)?, parcel: DescriptorParcel? = nil, logger: Logger
  ) {
    self.incomingParcel = Mutex(parcel)
    self.kho = kho
    self.inherited = inherited
    self.strayInherited = strayInherited
    self.notifier = SDNotifier()
    self.logger = logger
    self.named = Mutex(NamedFileDescriptors())
    self.handshake = Mutex(handshake)
  }

  /// Boots KHO and picks up what the previous image handed over: the
  /// arena, the named fds, and (after an overlapped handover) the
  /// handshake pipes. Inherited fds are made close-on-exec again. The
  /// runtime's environment variables are removed from the environment.
  public static func boot(
    _ options: KHOOptions, logger: Logger = Logger(label: "kho.runtime")
  ) throws(KHOBootError) -> HandoverRuntime {
    armInjectedFaults(logger)
    AddressSpaceHolder.reapInherited()
    // Read before anything else may start a child: the location goes to
    // the KHO core, which knows no environment.
    let handover = Environment.take(HandoverRecord.environmentName).map {
      value -> Result<HandoverLocation, HandoverError> in
      Result { () throws(HandoverError) in try HandoverLocation(parsing: value) }
    }
    let handshake = Handshake.inheritedEnds()
    var inherited = NamedFileDescriptors()
    var namesUnreadable = false
    do {
      inherited = try NamedFileDescriptors.inherited()
    } catch {
      logger.error("kho: ignoring handed-over fds: \(error)")
      namesUnreadable = true
    }
    for name in [
      NamedFileDescriptors.environmentName, Handshake.readyEnvironmentName,
      Handshake.commitEnvironmentName,
    ] {
      unsetenv(name)
    }
    // After a crash, a keeper (systemd's fd store, `kho run`) gives back
    // what this service stored: the arena, and named fds such as listeners.
    let passed = ListenFileDescriptors.take()
    let keptArena = passed.first { $0.name == ListenFileDescriptors.arenaName }?.fd
    for (name, fd) in passed where name != ListenFileDescriptors.arenaName {
      if inherited[name] == nil, (try? inherited.register(fd, name: name)) != nil { continue }
      FileDescriptor(rawValue: fd).closeIgnoringErrors()
    }
    let kho = try KHO.boot(
      options, handover: handover, crashed: keptArena.map { FileDescriptor(rawValue: $0) },
      logger: logger)
    if kho.incoming?.kind == .handover { FaultInjection.reach(FaultInjection.afterExec) }
    if let keptArena, keptArena != kho.arena.fd.rawValue {
      FileDescriptor(rawValue: keptArena).closeIgnoringErrors()
    }
    HandoverTrace.stamp("new: KHO booted")
    let parcel = takeInPlaceParcel(&inherited)
    HandoverTrace.stamp("new: parcel received")
    let known =
      [kho.arena.fd.rawValue] + [handshake?.ready, handshake?.commit].compactMap({ $0 })
    // Received with MSG_CMSG_CLOEXEC: already close-on-exec. A set, since
    // a parcel may hold 10,000 connections (a linear search per open fd
    // cost 50-100 ms of an in-place upgrade's pause).
    let received = Set(parcel.map { [$0.blob.rawValue] + $0.descriptors.map(\.rawValue) } ?? [])
    // A handover's exec keeps only the fds it names: anything else open in
    // a KHO boot came from a predecessor that could not name it.
    let named = inherited.entries.map(\.fd)
    let accounted = received.union(known).union(named)
    let stray =
      namesUnreadable || kho.isKHOBoot
      ? openDescriptors().filter { $0 > 2 && !accounted.contains($0) } : []
    for fd in known + named + stray {
      try? FileDescriptor(rawValue: fd).setCloseOnExec(true)
    }
    HandoverTrace.stamp("new: fds sorted")
    if !stray.isEmpty {
      logger.error("kho: fds \(stray) were handed over without a usable name")
    }
    let runtime = HandoverRuntime(
      kho: kho, inherited: inherited, strayInherited: stray, handshake: handshake,
      parcel: parcel, logger: logger)
    if keptArena != nil && kho.incoming?.kind != .crash && runtime.notifier.isEnabled {
      // The kept arena was refused: forget it, keep the new one only.
      try? runtime.notifier.removeStoredFDs(name: ListenFileDescriptors.arenaName)
    }
    runtime.keepAcrossCrash(kho.arena.fd.rawValue, name: ListenFileDescriptors.arenaName)
    return runtime
  }

  /// The variable naming system calls to fail in this process, for tests
  /// of error paths: `FUNCTION:ERRNO[:SKIP[:COUNT]]`, comma-separated (see
  /// `SystemCallFaults.Fault(parsing:)`), for example `execve:EACCES`. It
  /// applies to this image only: it is removed from the environment.
  public static let faultEnvironmentName = "KHO_FAULT_SYSCALL"

  private static func armInjectedFaults(_ logger: Logger) {
    guard let value = Environment.take(faultEnvironmentName) else { return }
    for spec in value.split(separator: ",") {
      guard let fault = SystemCallFaults.Fault(parsing: spec) else {
        logger.error("kho: ignoring malformed \(faultEnvironmentName) entry \"\(spec)\"")
        continue
      }
      logger.warning("kho: injecting a system call fault: \(fault)")
      SystemCallFaults.injectProcessWide(fault)
    }
  }

  /// Registers `fd` to be handed to the next image as `name`; unless
  /// `keepAcrossCrash` is false, it is also stored with the service
  /// manager (`FDSTORE=1`), so that it comes back after a crash.
  ///
  /// Keep listeners across a crash (clients wait in their backlog while
  /// the service restarts); not a FUSE connection, whose callers would hang
  /// on a mount nobody serves.
  public func register(_ fd: Int32, name: String, keepAcrossCrash: Bool = true)
    throws(NamedFileDescriptors.Failure)
  {
    try named.withLock { fds throws(NamedFileDescriptors.Failure) in
      try fds.register(fd, name: name)
    }
    if keepAcrossCrash { self.keepAcrossCrash(fd, name: name) }
  }

  /// `FDSTORE=1` with `FDNAME=name`; a no-op without a service manager. A
  /// store that fails is logged: the service runs, only a crash would lose
  /// more.
  private func keepAcrossCrash(_ fd: Int32, name: String) {
    guard notifier.isEnabled else { return }
    do { try notifier.storeFD(fd, name: name) } catch {
      logger.error("kho: the service manager does not keep \(name) across a crash: \(error)")
    }
  }

  /// Stops handing over the fd registered as `name`.
  @discardableResult
  public func unregister(_ name: String) -> Int32? {
    named.withLock { $0.unregister(name) }
  }

  /// The fds registered for the next image.
  public var registered: NamedFileDescriptors { named.withLock { $0 } }

  /// Whether an overlapped predecessor still serves until ``ready(status:)``
  /// returns: time spent before it (warming caches, building what the
  /// handed-over state will need) is not part of the clients' pause. False
  /// after an in-place handover, a cold start or a crash, and once ready.
  public var predecessorStillServes: Bool { handshake.withLock { $0 != nil } }

  /// Declares this image prepared: preserved memory nobody claimed is
  /// returned; after an overlapped handover, reports itself prepared to the
  /// previous image, which still serves, and waits until that one has
  /// frozen and let go; then tells systemd `READY=1`.
  ///
  /// Until it returns, the previous image may still change handed-over
  /// state (until its FREEZE) or roll back: claim memory before it, but
  /// read or write what is in it only after (`KHOIncoming/claim(_:)`
  /// gives the bytes; a store attaches to them once this returns).
  ///
  /// - Returns: `false` if the previous image aborted the handover; this
  ///   image must then exit without serving.
  @discardableResult
  public func ready(status: String? = nil) -> Bool {
    HandoverTrace.stamp("new: ready()")
    kho.finishBoot()
    if let (readyFD, commitFD) = handshake.withLock({ h in
      defer { h = nil }
      return h
    }) {
      let (committed, parcel) = Handshake.reportReadyAndAwaitCommit(
        readyFD: readyFD, commitFD: commitFD)
      guard committed else {
        logger.error("kho: the previous image aborted the handover")
        return false
      }
      incomingParcel.withLock { $0 = parcel }
      HandoverTrace.stamp("new: committed")
    }
    notify { (n) throws(SystemCallError) in try n.ready(status: status) }
    return true
  }

  /// What a successful ``handover(to:mode:)`` leaves to the caller.
  public enum Outcome: Sendable, Equatable {
    /// Overlapped: the next image (this pid) serves; this image must exit
    /// now, without touching handed-over state.
    case committed(pid: pid_t)
  }

  /// Hands everything over to `image`: serializes (DUMP, if not already
  /// active), loads the handover into scratch, then executes, sending
  /// FREEZE as late as it can.
  ///
  /// In place, FREEZE runs right before `execve`, and this returns only on
  /// failure. Overlapped, the next image is spawned while this one still
  /// serves; once it reports itself prepared (it validated the handover,
  /// mapped the arena, took its listeners, and waits), FREEZE runs, the
  /// commit is sent, and this returns ``Outcome/committed(pid:)``. On any
  /// failure KHO is aborted (UNFREEZE first if FREEZE ran), systemd is told
  /// `READY=1` again, and this image goes on serving with everything it had.
  ///
  /// The caller stops mutating handed-over state before calling (KHO's
  /// `withMutation` refuses while active) and stops accepting connections
  /// on handed-over listeners: they queue in the backlog for the next
  /// image.
  public func handover(to image: NextImage, mode: HandoverMode) throws(HandoverFailure) -> Outcome {
    guard !inProgress.exchange(true, ordering: .acquiringAndReleasing) else { throw .busy }
    defer { inProgress.store(false, ordering: .releasing) }
    notify { (n) throws(SystemCallError) in try n.reloading(status: "handing over (\(mode))") }
    do throws(HandoverFailure) {
      if !kho.outgoing.isActive {
        do { try kho.outgoing.serialize() } catch { throw .serialize(error) }
      }
      HandoverTrace.stamp("old: serialized")
      FaultInjection.reach(FaultInjection.afterDump)
      let location: HandoverLocation
      do { location = try kho.load() } catch { throw .load(error) }
      switch mode {
      case .inPlace:
        // Started before the freeze: cloning copies the fd table, which
        // costs a few milliseconds with 10,000 connections open, and clients
        // are still served now. Without a holder the exec is only slower.
        let holder = try? AddressSpaceHolder.start()
        do { try kho.outgoing.freeze() } catch {
          holder?.stop()
          throw .freeze(error)
        }
        FaultInjection.reach(FaultInjection.afterFreeze)
        let carried: FileDescriptor?
        do { carried = try carryParcelAcrossExec() } catch {
          holder?.stop()
          throw .launch(error)
        }
        let failure = execInPlace(image, location, holder: holder)
        if let carried { dropCarriedParcel(carried) }
        throw .launch(failure)
      case .overlapped(let timeout):
        return try overlapped(image, location, timeout)
      }
    } catch {
      logger.error("kho: handover aborted: \(error)")
      kho.outgoing.abort()
      outgoingParcel.withLock { parcel in
        parcel?.blob.closeIgnoringErrors()
        parcel = nil
      }
      notify { (n) throws(SystemCallError) in
        try n.ready(status: "serving (handover failed: \(error))")
      }
      throw error
    }
  }

  private func environment(
    for image: NextImage, _ location: HandoverLocation, handshake: (Int32, Int32)?
  ) -> [String] {
    let fds = registered
    return Environment.merging(
      image.environment,
      [
        HandoverRecord.environmentName: location.description,
        NamedFileDescriptors.environmentName: fds.entries.isEmpty ? nil : fds.environmentValue,
        Handshake.readyEnvironmentName: handshake.map { String($0.0) },
        Handshake.commitEnvironmentName: handshake.map { String($0.1) },
      ])
  }

  private func execInPlace(
    _ image: NextImage, _ location: HandoverLocation, holder: AddressSpaceHolder?
  ) -> SystemCallError {
    var next = image
    next.environment = environment(for: image, location, handshake: nil)
    let keep = [kho.arena.fd.rawValue] + registered.entries.map(\.fd)
    logger.info("kho: exec \(image.path) in place, generation \(kho.generation + 1)")
    HandoverTrace.stamp("old: exec in place")
    return ProcessLauncher.execInPlace(next, keeping: keep, holder: holder)
  }

  private func overlapped(
    _ image: NextImage, _ location: HandoverLocation, _ timeout: Duration
  ) throws(HandoverFailure) -> Outcome {
    var pipes: Handshake.Pipes
    do { pipes = try Handshake.Pipes.make() } catch { throw .launch(error) }
    defer { pipes.closeAll() }
    var next = image
    next.environment = environment(
      for: image, location, handshake: (pipes.readyWrite, pipes.commitRead))
    let keep =
      [kho.arena.fd.rawValue] + registered.entries.map(\.fd) + [pipes.readyWrite, pipes.commitRead]
    let pid: pid_t
    HandoverTrace.stamp("old: spawning")
    do { pid = try ProcessLauncher.spawn(next, keeping: keep) } catch { throw .launch(error) }
    HandoverTrace.stamp("old: spawned")
    pipes.closeChildEnds()
    logger.info("kho: spawned \(image.path) as pid \(pid), waiting for it to be ready")
    let (seconds, attoseconds) = timeout.components
    let milliseconds = Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000)
    switch Handshake.awaitReady(pipes.readyRead, timeoutMilliseconds: milliseconds) {
    case .ready:
      HandoverTrace.stamp("old: ready seen")
      // Prepared: only now does the state stop changing.
      do { try kho.outgoing.freeze() } catch {
        _ = Self.killAndReap(pid)
        throw .freeze(error)
      }
      HandoverTrace.stamp("old: frozen")
      FaultInjection.reach(FaultInjection.afterFreeze)
      do { try sendParcel(on: FileDescriptor(rawValue: pipes.commitWrite)) } catch {
        let status = Self.killAndReap(pid)
        throw .successorFailed(
          pid: pid,
          reason:
            "it was gone when the commit was sent (handing over descriptors: \(error))\(status.map { "; \($0)" } ?? "")"
        )
      }
      guard Handshake.commit(pipes.commitWrite) else {
        let status = Self.killAndReap(pid)
        throw .successorFailed(
          pid: pid,
          reason:
            "it was gone when the commit was sent, after reporting ready\(status.map { "; \($0)" } ?? "")"
        )
      }
      HandoverTrace.stamp("old: GO sent")
      notify { (n) throws(SystemCallError) in
        try n.mainPID(pid, status: "handed over to pid \(pid)")
      }
      return .committed(pid: pid)
    case .exited(let reason):
      let status = Self.killAndReap(pid)
      throw .successorFailed(pid: pid, reason: "\(reason)\(status.map { "; \($0)" } ?? "")")
    case .timedOut:
      _ = Self.killAndReap(pid)
      throw .timedOut(pid: pid, after: timeout)
    }
  }

  func outgoingParcelStore<R>(_ body: (inout DescriptorParcel?) -> R) -> R {
    outgoingParcel.withLock { body(&$0) }
  }

  func incomingParcelStore<R>(_ body: (inout DescriptorParcel?) -> R) -> R {
    incomingParcel.withLock { body(&$0) }
  }

  /// Kills `pid` and waits for it; returns how it ended.
  private static func killAndReap(_ pid: pid_t) -> String? {
    try? ProcessOperations.signal(pid, SIGKILL)
    guard let status = reap(pid) else { return nil }
    let signal = status & 0x7f
    if signal == 0 { return "exit status \((status >> 8) & 0xff)" }
    return signal == SIGKILL ? nil : "killed by signal \(signal)"
  }

  private func notify(_ body: (SDNotifier) throws(SystemCallError) -> Void) {
    do { try body(notifier) } catch { logger.warning("kho: sd_notify: \(error)") }
  }
}
