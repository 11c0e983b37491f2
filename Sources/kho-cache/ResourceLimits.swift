import KHOSystem

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
    let limit: (soft: UInt64, hard: UInt64)
    do { limit = try ProcessOperations.openFileLimit() } catch {
      warn("\(error); keeping -c \(maxConnections)")
      return maxConnections
    }
    let unlimited = UInt64(rlim_t.max)
    let wanted = overflow ? unlimited : UInt64(needed)
    if limit.soft >= wanted { return maxConnections }
    let soft = limit.hard == unlimited ? wanted : min(wanted, limit.hard)
    // On failure the soft limit stays where it was.
    let raised =
      (try? ProcessOperations.setOpenFileLimit(soft: soft, hard: limit.hard)) != nil
      ? soft : limit.soft
    if raised >= wanted { return maxConnections }
    let fitting = max(1, Int(clamping: raised) - headroom)
    warn(
      "the open-file limit (RLIMIT_NOFILE soft \(raised), hard \(limit.hard == unlimited ? "unlimited" : "\(limit.hard)")) "
        + "is below -c \(maxConnections) plus \(headroom) descriptors of headroom; "
        + "allowing \(fitting) connections instead (raise the limit, e.g. LimitNOFILE=\(needed) in the unit, or lower -c)"
    )
    return fitting
  }

  private static func warn(_ message: String) {
    // write(2): stdio's `stderr` is shared mutable state to Swift 6.
    try? FileDescriptor(rawValue: STDERR_FILENO).writeAll(
      Array("kho-cache: warning: \(message)\n".utf8))
  }
}
