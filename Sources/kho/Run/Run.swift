import ArgumentParser
import KHOSystem

#if canImport(Glibc)
  import Glibc
#endif

extension RestartPolicy: ExpressibleByArgument {}

/// `kho run [OPTIONS] -- COMMAND [ARGS...]`: a keeper for a service's fds
/// (its arena above all) without systemd, speaking systemd's notify
/// protocol to its child and restarting it warm after a crash.
struct Run: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Supervise a command as systemd would, holding its fd store across crashes.",
    discussion: """
      kho run starts COMMAND and keeps what it stores, so that after a crash \
      the next start gets its arena and its listening sockets back: the fd \
      store of a systemd service (FileDescriptorStoreMax=), for hosts without \
      systemd. It never reads what the fds hold.

      The protocol (man sd_notify), on a Unix datagram socket in the abstract \
      namespace given to the child as NOTIFY_SOCKET=@NAME. Fields understood:

        READY=1          the service is up (ends --ready-timeout)
        RELOADING=1      a reload or handover started; READY=1 ends it
        STOPPING=1       the service is going down (logged)
        STATUS=TEXT      logged when it changes (at most 200 characters;
                         20 lines at once, then one every 5 s)
        MAINPID=PID      the main process is now PID (the successor of an
                         overlapped handover): signals go to it, its exit
                         counts. PID must be a live descendant of kho run.
        FDSTORE=1        keep the fds attached (SCM_RIGHTS) under FDNAME=
                         (default 'stored'); fds stored under a name replace,
                         and close, those held under it before
        FDSTOREREMOVE=1  close and forget the fds held under FDNAME=
        WATCHDOG=1       accepted and ignored (no watchdog yet)

      Datagrams are accepted only from kho run's descendants, checked with \
      SCM_CREDENTIALS (like NotifyAccess=all, limited to the supervised tree; \
      kho run is a child subreaper, so orphans stay in it). A datagram longer \
      than 4096 bytes, with a NUL byte, without credentials or with truncated \
      control data is ignored and its fds closed; so are fds sent without \
      FDSTORE=1, and fds that would make the store hold more than \
      --fd-store-max. FDNAME= is 1 to 255 printable ASCII characters without \
      ':'. Refusals are logged, rate-limited.

      Each start gets the stored fds as 3, 4, ... in store order with \
      LISTEN_FDS=N, LISTEN_FDNAMES=NAME:NAME... and LISTEN_PID set to its own \
      pid (set in the child between fork and exec); without fds, none of \
      them. The child runs in its own process group with default signal \
      handling.

      Restarts (--restart): on-failure restarts after a non-zero exit, a \
      signal, or a --ready-timeout; always also after exit 0; no never. The \
      delay starts at --restart-delay and doubles up to --restart-delay-max. \
      A run that stayed up --start-limit-interval seconds after READY=1 (or \
      after its start, if it never sent it) resets the delay and the start \
      count. If --start-limit starts happened within --start-limit-interval \
      seconds and the run fails again, kho run gives up: exit 1.

      Signals: SIGHUP, SIGUSR1 and SIGUSR2 are forwarded to the main process. \
      SIGTERM and SIGINT are forwarded too, and then kho run waits for it to \
      exit (SIGKILL after --stop-timeout), does not restart it, and exits \
      with its status. Other processes the child left behind are reaped as \
      they exit, not killed (and left running when kho run exits).

      Exit status: the main process's (128 + N if killed by signal N), or 1 \
      if kho run gave up or could not start COMMAND at all. Log lines on \
      stderr start with 'kho run:'.

      Examples:
        kho run -- /usr/bin/mysvc --port 11211
        kho run --restart always --restart-delay 0.5 --start-limit 10 -- ./mysvc
        kho run --ready-timeout 30 --fd-store-max 8 -- ./mysvc --serve
      """
  )

  @Option(help: ArgumentHelp("When to start the command again.", valueName: "policy"))
  var restart: RestartPolicy = .onFailure

  @Option(help: ArgumentHelp("The first delay before a restart.", valueName: "seconds"))
  var restartDelay: Double = 0.1

  @Option(help: ArgumentHelp("The longest delay before a restart.", valueName: "seconds"))
  var restartDelayMax: Double = 10

  @Option(
    help: ArgumentHelp(
      "Give up when a run fails after this many starts within --start-limit-interval (0: never).",
      valueName: "n"))
  var startLimit: Int = 5

  @Option(help: ArgumentHelp("The window of --start-limit.", valueName: "seconds"))
  var startLimitInterval: Double = 10

  @Option(
    help: ArgumentHelp(
      "Stop (SIGTERM) and count as failed a start that did not send READY=1 within this time (default: wait forever).",
      valueName: "seconds"))
  var readyTimeout: Double?

  @Option(
    help: ArgumentHelp(
      "How long to wait after SIGTERM before SIGKILL.", valueName: "seconds"))
  var stopTimeout: Double = 10

  @Option(help: ArgumentHelp("The most fds held in the store (1 to 1024).", valueName: "n"))
  var fdStoreMax: Int = 64

  @Argument(
    parsing: .postTerminator,
    help: ArgumentHelp(
      "The command to supervise and its arguments, after '--'.", valueName: "COMMAND ARGS"))
  var command: [String] = []

  func validate() throws {
    if command.isEmpty { throw ValidationError("give the command to supervise after '--'") }
    for (name, value) in [
      ("--restart-delay", restartDelay), ("--restart-delay-max", restartDelayMax),
      ("--start-limit-interval", startLimitInterval), ("--stop-timeout", stopTimeout),
    ] where !(value >= 0 && value <= 86400) {
      throw ValidationError("\(name) must be a number of seconds from 0 to 86400")
    }
    if restartDelayMax < restartDelay {
      throw ValidationError("--restart-delay-max must not be less than --restart-delay")
    }
    if let readyTimeout, !(readyTimeout > 0 && readyTimeout <= 86400) {
      throw ValidationError("--ready-timeout must be a number of seconds above 0, at most 86400")
    }
    if startLimit < 0 { throw ValidationError("--start-limit must be 0 or more") }
    if !(1...1024).contains(fdStoreMax) {
      throw ValidationError("--fd-store-max must be from 1 to 1024")
    }
  }

  func run() throws {
    let path = try Self.resolve(command[0])
    let keeper = Keeper(
      KeeperConfiguration(
        path: path, arguments: command, restart: restart, restartDelay: restartDelay,
        restartDelayMax: restartDelayMax, startLimit: startLimit,
        startLimitInterval: startLimitInterval, readyTimeout: readyTimeout,
        stopTimeout: stopTimeout, fdStoreMax: fdStoreMax))
    let code = keeper.run()
    if code != 0 { throw ExitCode(code) }
  }

  /// The executable `name` names, as `execvp` would find it: a name with a
  /// slash as is, a bare name in `$PATH`; exit 1 with a message if none.
  static func resolve(_ name: String) throws -> String {
    func usable(_ path: String) -> Int32 {
      do throws(SystemCallError) {
        if try FileSystem.status(path).mode & UInt32(S_IFMT) != UInt32(S_IFREG) { return EACCES }
        try FileSystem.checkExecutable(path)
        return 0
      } catch {
        return error.errno.rawValue
      }
    }
    if name.isEmpty { throw Service.fail("run: the command's name is empty") }
    if name.contains("/") {
      let e = usable(name)
      if e == 0 { return Service.absolute(name) }
      throw Service.fail("run: \(name): \(String(cString: strerror(e))) (not an executable file)")
    }
    let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/local/bin:/usr/bin:/bin"
    for dir in path.split(separator: ":", omittingEmptySubsequences: false) {
      let candidate = (dir.isEmpty ? "." : String(dir)) + "/" + name
      if usable(candidate) == 0 { return Service.absolute(candidate) }
    }
    throw Service.fail("run: \(name): command not found in $PATH")
  }
}
