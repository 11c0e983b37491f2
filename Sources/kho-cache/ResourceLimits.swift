#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Fitting `-c` to the process's open-file limit, so that the connection
/// limit, answered with memcached's "ERROR Too many open connections", is
/// reached before accept(2) runs out of descriptors (EMFILE), which a
/// client could only see as a hang.
enum ResourceLimits {
  /// Descriptors the process holds besides its connections: standard
  /// streams, the arena memfd, the listener, the control mount's FUSE
  /// device, the runtime's pipes, and slack for a burst of refused
  /// connections that are accepted, answered and closed (each holds a
  /// descriptor for a moment); plus, per event loop, its epoll, eventfd
  /// and timerfd.
  static func descriptorHeadroom(threads: Int) -> Int { 32 + 3 * threads }

  /// Raises RLIMIT_NOFILE's soft limit to fit `maxConnections` connections
  /// and the headroom, as far as the hard limit allows, and returns the
  /// connection limit to enforce: `maxConnections`, or, when the hard limit
  /// is too low, what fits under it (said on standard error).
  static func fitOpenFileLimit(maxConnections: Int, threads: Int) -> Int {
    let headroom = descriptorHeadroom(threads: threads)
    let (needed, overflow) = maxConnections.addingReportingOverflow(headroom)
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else {
      warn(
        "getrlimit(RLIMIT_NOFILE): \(String(cString: strerror(errno))); keeping -c \(maxConnections)"
      )
      return maxConnections
    }
    let wanted = overflow ? rlim_t.max : rlim_t(needed)
    if limit.rlim_cur >= wanted { return maxConnections }
    let soft = limit.rlim_max == rlim_t.max ? wanted : min(wanted, limit.rlim_max)
    var raised = limit
    raised.rlim_cur = soft
    if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) != 0 {
      // The soft limit stays where it was.
      raised = limit
    }
    if raised.rlim_cur >= wanted { return maxConnections }
    let fitting = max(1, Int(clamping: raised.rlim_cur) - headroom)
    warn(
      "the open-file limit (RLIMIT_NOFILE soft \(raised.rlim_cur), hard \(limit.rlim_max == rlim_t.max ? "unlimited" : "\(limit.rlim_max)")) "
        + "is below -c \(maxConnections) plus \(headroom) descriptors of headroom; "
        + "allowing \(fitting) connections instead (raise the limit, e.g. LimitNOFILE=\(needed) in the unit, or lower -c)"
    )
    return fitting
  }

  private static func warn(_ message: String) {
    let line = Array("kho-cache: warning: \(message)\n".utf8)
    // write(2): stdio's `stderr` is shared mutable state to Swift 6.
    _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
  }
}
