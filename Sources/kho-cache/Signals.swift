import KHORuntime
import Logging

#if canImport(Glibc)
  import Glibc
#endif

/// Signals taken synchronously by one thread (`sigwait`), so that the work
/// they start (a handover) runs on a plain thread, never on an event loop
/// and never in a signal handler.
enum Signals {
  /// Blocks `signals` in the calling thread and in every thread it starts
  /// afterwards.
  static func block(_ signals: [Int32]) {
    var set = sigset_t()
    sigemptyset(&set)
    for s in signals { sigaddset(&set, s) }
    pthread_sigmask(SIG_BLOCK, &set, nil)
  }

  /// Starts the thread that waits for SIGHUP (upgrade) and SIGTERM/SIGINT
  /// (stop).
  static func handle(
    hangup: @escaping @Sendable () -> Void, terminate: @escaping @Sendable () -> Void,
    logger: Logger
  ) {
    let signals = [SIGHUP, SIGTERM, SIGINT]
    do {
      try SystemThread.detached(name: "kho-signals") {
        var set = sigset_t()
        sigemptyset(&set)
        for s in signals { sigaddset(&set, s) }
        while true {
          var signal: Int32 = 0
          guard sigwait(&set, &signal) == 0 else { continue }
          if signal == SIGHUP { hangup() } else { terminate() }
        }
      }
    } catch {
      // Blocked with nobody to take them, SIGTERM could never stop the
      // server: give them their default actions back (SIGHUP then stops
      // it too, rather than upgrading).
      logger.error("kho-cache: no signal thread (\(error)); SIGHUP and SIGTERM now just stop it")
      var set = sigset_t()
      sigemptyset(&set)
      for s in signals { sigaddset(&set, s) }
      pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }
  }

  private final class Handlers: Sendable {
    let hangup: @Sendable () -> Void
    let terminate: @Sendable () -> Void
    init(hangup: @escaping @Sendable () -> Void, terminate: @escaping @Sendable () -> Void) {
      self.hangup = hangup
      self.terminate = terminate
    }
  }
}
