import KHOSystem

#if canImport(Glibc)
  import Glibc
#endif

/// When `kho run` starts its command again.
enum RestartPolicy: String, CaseIterable {
  case onFailure = "on-failure"
  case always
  case no
}

/// What `kho run` was told: the command and its policies.
struct KeeperConfiguration {
  var path: String
  var arguments: [String]
  var restart: RestartPolicy
  var restartDelay: Double
  var restartDelayMax: Double
  var startLimit: Int
  var startLimitInterval: Double
  var readyTimeout: Double?
  var stopTimeout: Double
  var fdStoreMax: Int
}

/// The keeper: starts the command, speaks systemd's notify protocol to it,
/// holds its fd store, restarts it by policy, forwards signals and reaps
/// every descendant. Single-threaded: one `poll` over the notify socket, a
/// signalfd and the main process's pidfd. It never reads what the fds
/// hold.
final class Keeper {
  private let config: KeeperConfiguration
  private let selfPID = getpid()
  private var notifyFD: Int32 = -1
  private var notifyName = ""
  private var signalFD: Int32 = -1
  private var store: FDStore
  private var environment: [String] = []

  // Receive buffers, allocated once: nothing a peer sends makes the keeper
  // allocate more than one datagram's worth.
  private let buffer = UnsafeMutableRawBufferPointer.allocate(
    byteCount: NotifyMessage.maximumLength, alignment: 8)

  // The current run.
  private var main: pid_t?
  private var mainPidfd: Int32?
  private var formerMain: pid_t?
  private var generation = 0
  private var startedAt = 0.0
  private var readyAt: Double?
  private var ready = false
  private var stoppingReported = false
  private var status: String?
  private var readyDeadline: Double?
  private var killAt: Double?
  private var timedOut = false

  // Between runs, and overall.
  private var restartAt: Double?
  private var delay: Double
  private var starts: [Double] = []
  private var stopSignal: Int32?
  private var lastStatus: ExitStatus = .exited(0)
  private var exitCode: Int32?
  private var refusals = LogLimiter()
  private var statuses = LogLimiter()

  /// The signals the keeper handles: these are forwarded to the main
  /// process (SIGTERM and SIGINT also stop the keeper); SIGCHLD wakes it.
  static let forwarded: [Int32] = [SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2]

  /// A keeper for `config`; nothing starts before `run`.
  init(_ config: KeeperConfiguration) {
    self.config = config
    self.store = FDStore(capacity: config.fdStoreMax)
    self.delay = config.restartDelay
    starts.reserveCapacity(max(config.startLimit, 1) + 1)
  }

  deinit {
    buffer.deallocate()

  }

  /// Runs until the command is done for good; returns the exit status.
  func run() -> Int32 {
    do {
      try setUp()
    } catch {
      KeeperSystem.log("cannot start: \(error)")
      return 1
    }
    start()
    while exitCode == nil {
      iterate()
    }
    return exitCode ?? 1
  }

  /// Becomes a subreaper, takes the signals into a signalfd, opens the
  /// notify socket and prepares the children's environment.
  private func setUp() throws(SystemCallError) {
    KeeperSystem.ignoreSIGPIPE()
    try KeeperSystem.setChildSubreaper()
    signalFD = try KeeperSystem.signalFD(Self.forwarded + [SIGCHLD])
    (notifyFD, notifyName) = try KeeperSystem.notifySocket()
    // What every child inherits: the keeper's environment without what
    // describes the keeper's own manager, plus the notify socket.
    let own: Set<String> = [
      "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_PID",
      "WATCHDOG_USEC",
    ]
    environment = KeeperSystem.environment().filter { entry in
      !own.contains(String(entry.prefix { $0 != "=" }))
    }
    environment.append("NOTIFY_SOCKET=@\(notifyName)")
  }

  /// One turn of the loop. Datagrams are read before exits are handled, so
  /// that what a process said before dying is heard while it counts as
  /// the main process.
  private func iterate() {
    var fds = [
      pollfd(fd: notifyFD, events: Int16(POLLIN), revents: 0),
      pollfd(fd: signalFD, events: Int16(POLLIN), revents: 0),
    ]
    if let mainPidfd { fds.append(pollfd(fd: mainPidfd, events: Int16(POLLIN), revents: 0)) }
    // Whose pidfd was polled: a MAINPID= read below may change the main
    // process (and reuse the fd number) before the result is looked at.
    let polledMain = main
    do {
      try KeeperSystem.poll(&fds, timeout: nextDeadline().map { $0 - KeeperSystem.now() })
    } catch {
      KeeperSystem.log("\(error)")
    }
    drainNotifications()
    handleSignals()
    reapChildren()
    if fds.count > 2, fds[2].revents != 0, main == polledMain { checkMainNotChild() }
    if exitCode == nil { handleTimers() }
  }

  /// The earliest timer due: ready timeout, SIGKILL escalation, restart.
  private func nextDeadline() -> Double? {
    [readyDeadline, killAt, restartAt].compactMap { $0 }.min()
  }

  // MARK: Runs

  /// Starts the next generation with the stored fds.
  private func start() {
    generation += 1
    var env = environment
    if !store.isEmpty {
      env.append("LISTEN_FDS=\(store.count)")
      env.append("LISTEN_FDNAMES=\(store.names.joined(separator: ":"))")
    }
    let now = KeeperSystem.now()
    let pid: pid_t
    do {
      pid = try KeeperSystem.spawn(config.path, config.arguments, env, fds: store.fds)
    } catch {
      KeeperSystem.log("cannot start \(config.path) (generation \(generation)): \(error)")
      if generation == 1 {
        exitCode = 1
      } else {
        starts.append(now)
        ended(.exited(127), pid: nil)
      }
      return
    }
    main = pid
    mainPidfd = try? KeeperSystem.pidfdOpen(pid)
    startedAt = now
    readyAt = nil
    ready = false
    stoppingReported = false
    status = nil
    timedOut = false
    killAt = nil
    readyDeadline = config.readyTimeout.map { now + $0 }
    starts.append(now)
    let held =
      store.isEmpty
      ? ""
      : " with \(store.count) fd\(store.count == 1 ? "" : "s"): \(store.names.joined(separator: ", "))"
    KeeperSystem.log("started \(pid) (generation \(generation))\(held)")
  }

  /// The main process ended with `status`: exit, or restart by policy.
  private func mainExited(_ status: ExitStatus) {
    guard let pid = main else { return }
    if let mainPidfd { KeeperSystem.close(mainPidfd) }
    mainPidfd = nil
    main = nil
    formerMain = pid
    readyDeadline = nil
    killAt = nil
    ended(status, pid: pid)
  }

  /// Decides what follows a run that ended with `status` (`pid` nil: it
  /// never started).
  private func ended(_ status: ExitStatus, pid: pid_t?) {
    lastStatus = status
    let who = pid.map { "\($0) " } ?? "generation \(generation) "
    if let stopSignal {
      KeeperSystem.log("\(who)\(status) (stopped by \(KeeperSystem.signalName(stopSignal)))")
      exitCode = status.code
      return
    }
    let failed = timedOut || !status.isSuccess
    timedOut = false
    let restart = config.restart == .always || (config.restart == .onFailure && failed)
    if !restart {
      KeeperSystem.log("\(who)\(status); not restarting (--restart \(config.restart.rawValue))")
      exitCode = status.code
      return
    }
    let now = KeeperSystem.now()
    // A run that served for a whole interval was healthy: start over.
    if pid != nil, now - (readyAt ?? startedAt) >= config.startLimitInterval {
      if delay != config.restartDelay || starts.count > 1 {
        KeeperSystem.log(
          "\(who)had been up \(Self.seconds(config.startLimitInterval)) s or more: "
            + "back-off and start count reset")
      }
      delay = config.restartDelay
      starts.removeAll(keepingCapacity: true)
    }
    starts.removeAll(where: { now - $0 >= config.startLimitInterval })
    if config.startLimit > 0, starts.count >= config.startLimit {
      KeeperSystem.log(
        "\(who)\(status); \(starts.count) starts within \(Self.seconds(config.startLimitInterval)) s, "
          + "giving up (--start-limit \(config.startLimit))")
      exitCode = 1
      return
    }
    KeeperSystem.log("\(who)\(status); restarting in \(Self.seconds(delay)) s")
    restartAt = now + delay
    delay = min(delay * 2, config.restartDelayMax)
  }

  /// Acts on the timers that are due: a start not ready in time gets
  /// SIGTERM, a process that outlives --stop-timeout SIGKILL, a pending
  /// restart starts.
  private func handleTimers() {
    let now = KeeperSystem.now()
    if let deadline = readyDeadline, now >= deadline, let pid = main, !ready {
      readyDeadline = nil
      timedOut = true
      KeeperSystem.log(
        "\(pid) not ready within \(Self.seconds(config.readyTimeout ?? 0)) s (--ready-timeout); sending SIGTERM"
      )
      KeeperSystem.kill(pid, SIGTERM)
      killAt = now + config.stopTimeout
    }
    if let deadline = killAt, now >= deadline, let pid = main {
      killAt = nil
      KeeperSystem.log(
        "\(pid) still running \(Self.seconds(config.stopTimeout)) s after SIGTERM; sending SIGKILL")
      KeeperSystem.kill(pid, SIGKILL)
    }
    if let deadline = restartAt, now >= deadline, main == nil {
      restartAt = nil
      start()
    }
  }

  // MARK: Signals and children

  /// Reads every pending signal: SIGTERM and SIGINT stop, the others are
  /// forwarded to the main process, SIGCHLD only wakes the loop.
  private func handleSignals() {
    while let signal = try? KeeperSystem.readSignal(signalFD) {
      switch signal {
      case SIGCHLD:
        break  // reapChildren runs on every turn
      case SIGTERM, SIGINT:
        stop(signal)
      default:
        if let pid = main {
          KeeperSystem.kill(pid, signal)
        } else {
          KeeperSystem.log("\(KeeperSystem.signalName(signal)) with no process running; ignored")
        }
      }
    }
  }

  /// SIGTERM or SIGINT: forward it, wait for the main process to exit, do
  /// not restart, exit with its status (SIGKILL after --stop-timeout).
  private func stop(_ signal: Int32) {
    let first = stopSignal == nil
    stopSignal = signal
    restartAt = nil
    guard let pid = main else {
      KeeperSystem.log("\(KeeperSystem.signalName(signal)) while no process runs; exiting")
      exitCode = lastStatus.code
      return
    }
    if first {
      KeeperSystem.log("\(KeeperSystem.signalName(signal)): stopping \(pid)")
      killAt = KeeperSystem.now() + config.stopTimeout
    }
    readyDeadline = nil
    KeeperSystem.kill(pid, signal)
  }

  /// Reaps every child that has exited. Each is first only seen (`WNOWAIT`):
  /// it is dead, so all it sent is queued, and is read now, while its pid
  /// still names it.
  private func reapChildren() {
    while let pid = KeeperSystem.exitedChild() {
      drainNotifications()
      guard let status = try? KeeperSystem.reap(pid) else { break }
      if pid == main {
        mainExited(status)
      } else if pid == formerMain {
        KeeperSystem.log("\(pid) (the former main process) \(status)")
      }
    }
  }

  /// The main process's pidfd is readable but it was not reaped: it is not
  /// the keeper's child (a `MAINPID=` whose parent still lives).
  private func checkMainNotChild() {
    guard let pid = main else { return }
    do {
      if let status = try KeeperSystem.reap(pid) { mainExited(status) }
    } catch {
      mainExited(.unknown)
    }
  }

  // MARK: Notifications

  /// Reads queued datagrams; at most a bounded number per call, so that a
  /// flood cannot starve signals and exits.
  private func drainNotifications() {
    for _ in 0..<256 {
      let datagram: NotifyDatagram?
      do {
        datagram = try KeeperSystem.receive(notifyFD, into: buffer)
      } catch {
        KeeperSystem.log("\(error)")
        return
      }
      guard let datagram else { return }
      handle(datagram)
    }
  }

  /// Applies one datagram; every fd it carried is stored or closed.
  private func handle(_ d: NotifyDatagram) {
    var fds = d.fds
    defer { for fd in fds { KeeperSystem.close(fd) } }
    guard d.pid > 0 else { return refuse("a datagram without credentials", fds: fds.count) }
    guard isSupervised(d.pid) else {
      return refuse("a datagram from \(d.pid), not in the supervised tree", fds: fds.count)
    }
    if d.length > NotifyMessage.maximumLength {
      return refuse(
        "a datagram of \(d.length) bytes from \(d.pid) (at most \(NotifyMessage.maximumLength))",
        fds: fds.count)
    }
    if d.controlTruncated {
      return refuse("a datagram from \(d.pid) with truncated control data", fds: fds.count)
    }
    let bytes = ArraySlice(UnsafeRawBufferPointer(rebasing: buffer[..<d.length]))
    guard let message = NotifyMessage(bytes) else {
      return refuse("a datagram from \(d.pid) with a NUL byte", fds: fds.count)
    }
    apply(message, from: d.pid)
    if message.fdStoreRemove {
      if let name = message.fdName {
        if store.remove(name: name) > 0 { KeeperSystem.log(store.summary) }
      } else {
        refuse("FDSTOREREMOVE=1 from \(d.pid) with an invalid FDNAME", fds: 0)
      }
    }
    if message.fdStore, !fds.isEmpty {
      storeFDs(&fds, message: message, from: d.pid)
    } else if !fds.isEmpty {
      refuse(
        "\(fds.count) fd\(fds.count == 1 ? "" : "s") from \(d.pid) sent without FDSTORE=1",
        fds: fds.count)
    }
  }

  /// Applies a message's state fields (MAINPID= first, so that a READY=1
  /// beside it is the new main process's).
  private func apply(_ m: NotifyMessage, from sender: pid_t) {
    if m.mainPIDText != nil { changeMain(m, from: sender) }
    guard let pid = main else { return }
    if m.reloading, ready {
      ready = false
      statuses.log("\(pid) reloading")
    }
    if m.ready, !ready {
      ready = true
      readyDeadline = nil
      // The first READY=1 of a run is always logged; after a reload, the
      // lines are rate-limited like STATUS= (a child may toggle them).
      if readyAt == nil {
        readyAt = KeeperSystem.now()
        KeeperSystem.log("\(pid) ready")
      } else {
        statuses.log("\(pid) ready")
      }
    }
    if m.stopping, !stoppingReported {
      stoppingReported = true
      KeeperSystem.log("\(pid) stopping")
    }
    if let text = m.status, text != status {
      status = text
      statuses.log("\(pid) status: \(text)")
    }
  }

  /// `MAINPID=`: the supervised process is now that one, if it is alive and
  /// in the supervised tree (never an arbitrary process the keeper would
  /// then signal).
  private func changeMain(_ m: NotifyMessage, from sender: pid_t) {
    guard let new = m.mainPID, new != selfPID else {
      return refuse(
        "MAINPID=\(m.mainPIDText ?? "") from \(sender): not a pid above 1 (nor kho run's)", fds: 0)
    }
    if new == main { return }
    guard isSupervised(new), let pidfd = try? KeeperSystem.pidfdOpen(new) else {
      return refuse(
        "MAINPID=\(new) from \(sender): not a live process of the supervised tree", fds: 0)
    }
    if let mainPidfd { KeeperSystem.close(mainPidfd) }
    mainPidfd = pidfd
    let old = main
    formerMain = old
    main = new
    KeeperSystem.log("main process now \(new)" + (old.map { " (was \($0))" } ?? ""))
  }

  /// `FDSTORE=1`: moves `fds` into the store (then empties `fds`), or
  /// refuses them, leaving them to the caller to close.
  private func storeFDs(_ fds: inout [Int32], message m: NotifyMessage, from sender: pid_t) {
    guard let name = m.fdName else {
      return refuse(
        "FDSTORE=1 from \(sender) with an invalid FDNAME", fds: fds.count)
    }
    guard store.store(fds, name: name) else {
      return refuse(
        "FDSTORE=1 of \(fds.count) fds named \(name) from \(sender): the store holds at most "
          + "\(store.capacity) (--fd-store-max); closed", fds: fds.count)
    }
    fds = []  // owned by the store now
    KeeperSystem.log(store.summary)
  }

  /// Whether `pid` is the main process or a descendant of the keeper (the
  /// supervised tree; a zombie still counts: its `/proc` entry stays until
  /// it is reaped).
  private func isSupervised(_ pid: pid_t) -> Bool {
    if pid == main { return true }
    var p = pid
    for _ in 0..<64 {
      guard p > 1, p != selfPID, let parent = KeeperSystem.parentPID(of: p) else { return false }
      if parent == selfPID { return true }
      p = parent
    }
    return false
  }

  /// Logs a refused datagram, rate-limited: a peer must not fill the log.
  private func refuse(_ what: String, fds: Int) {
    let closed =
      fds > 0 && !what.contains("closed") ? "; \(fds) fd\(fds == 1 ? "" : "s") closed" : ""
    refusals.log("ignored \(what)\(closed)")
  }

  /// `0.1`, `2`, `1.25`: seconds for log lines.
  static func seconds(_ s: Double) -> String {
    let ms = Int((s * 1000).rounded())
    var text = "\(ms / 1000)"
    let frac = ms % 1000
    if frac != 0 {
      var f = String(frac)
      while f.count < 3 { f = "0" + f }
      while f.hasSuffix("0") { f.removeLast() }
      text += "." + f
    }
    return text
  }
}

/// A token bucket for log lines a peer can cause: 20 at once, then one
/// every 5 seconds; the next line logged says how many were not.
struct LogLimiter {
  private var tokens = 20.0
  private var refilled = KeeperSystem.now()
  private var unlogged = 0

  /// Logs `line` if a token is left, else counts it as not logged.
  mutating func log(_ line: String) {
    let now = KeeperSystem.now()
    tokens = min(20, tokens + (now - refilled) / 5)
    refilled = now
    guard tokens >= 1 else {
      unlogged += 1
      return
    }
    tokens -= 1
    KeeperSystem.log(line + (unlogged > 0 ? " (and \(unlogged) more not logged)" : ""))
    unlogged = 0
  }
}
