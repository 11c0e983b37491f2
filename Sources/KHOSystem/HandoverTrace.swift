#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A timeline of one handover, for finding where its pause goes.
///
/// With `KHO_TRACE_HANDOVER` set in the environment (it is passed on to
/// every next image), each step writes one line to standard error:
///
///     TRACE <CLOCK_MONOTONIC nanoseconds> <pid> <step>
///
/// The clock is the system's, so the lines of the two images, and a
/// client's own `CLOCK_MONOTONIC` stamps (Python's `time.monotonic_ns`),
/// sort into one timeline. Without the variable a step costs one load.
public enum HandoverTrace {
  /// Whether `KHO_TRACE_HANDOVER` was set when the process started.
  public static let isEnabled = getenv("KHO_TRACE_HANDOVER") != nil

  /// Writes `step`'s line, if tracing is enabled (one `write(2)`, so the
  /// lines of several threads do not interleave).
  public static func stamp(_ step: @autoclosure () -> String) {
    guard isEnabled else { return }
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    let line = "TRACE \(Int(now.tv_sec) * 1_000_000_000 + Int(now.tv_nsec)) \(getpid()) \(step())\n"
    var bytes = Array(line.utf8)
    _ = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
  }
}
