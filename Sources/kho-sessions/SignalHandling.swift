// SIGHUP upgrades in place to the executable this process runs; SIGTERM
// and SIGINT unmount the control files and exit, so no dead mount is left.

import Dispatch
import KHORuntime
import KHOServiceControl
import Logging

#if canImport(Glibc)
  import Glibc
#endif

/// The signal sources, kept alive for the life of the process.
final class SignalHandling {
  private let sources: [any DispatchSourceSignal]

  /// Installs the handlers. Dispatch sources rather than a `sigwait`
  /// thread: the async main's threads already run, so a mask set now would
  /// not reach them; a source sees the signal whichever thread it hits.
  init(control: ServiceControl?, logger: Logger) {
    let queue = DispatchQueue(label: "kho-sessions.signals")
    func source(_ signo: Int32, _ handler: @escaping @Sendable () -> Void)
      -> any DispatchSourceSignal
    {
      signal(signo, SIG_IGN)
      let source = DispatchSource.makeSignalSource(signal: signo, queue: queue)
      source.setEventHandler(handler: handler)
      source.resume()
      return source
    }
    let leave: @Sendable () -> Void = {
      control?.unmount()
      fflush(nil)
      exit(0)
    }
    sources = [
      source(SIGHUP) {
        guard let control else {
          logger.error("kho-sessions: SIGHUP needs a control mount to hand over; ignored")
          return
        }
        // The next image installs its own handlers; until then the
        // ignored dispositions it inherits keep a signal from killing it.
        do { _ = try control.handOver(to: NextImage.current(), mode: .inPlace) } catch {
          logger.error("kho-sessions: upgrade failed, still serving: \(error)")
        }
      },
      source(SIGTERM, leave),
      source(SIGINT, leave),
    ]
  }
}
