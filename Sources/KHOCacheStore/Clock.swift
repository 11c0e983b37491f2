#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Where the store reads time from. Injectable so tests can move time.
///
/// The store never keeps wall-clock times: expiry is in "cache clock"
/// seconds, a counter in the region header that only moves forward, driven
/// by `monotonicNanoseconds`. The wall clock is read only to convert an
/// absolute memcached exptime (a unix time) at the moment of the command.
public struct CacheClockSource: Sendable {
  /// Monotonic nanoseconds; only differences matter.
  public var monotonicNanoseconds: @Sendable () -> UInt64
  /// Unix time in seconds.
  public var wallSeconds: @Sendable () -> Int64

  /// Creates a clock source from two functions.
  public init(
    monotonicNanoseconds: @escaping @Sendable () -> UInt64,
    wallSeconds: @escaping @Sendable () -> Int64
  ) {
    self.monotonicNanoseconds = monotonicNanoseconds
    self.wallSeconds = wallSeconds
  }

  /// CLOCK_MONOTONIC and CLOCK_REALTIME.
  public static let system = CacheClockSource(
    monotonicNanoseconds: {
      var ts = timespec()
      clock_gettime(CLOCK_MONOTONIC, &ts)
      return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    },
    wallSeconds: {
      var ts = timespec()
      clock_gettime(CLOCK_REALTIME, &ts)
      return Int64(ts.tv_sec)
    })
}

/// The cache clock of this process: the value read from the header at
/// format/attach time, advanced by monotonic time elapsed since.
struct CacheClock {
  let source: CacheClockSource
  /// The cache clock, in nanoseconds, at `baseMonotonic`.
  let baseNanoseconds: UInt64
  let baseMonotonic: UInt64

  init(source: CacheClockSource, resumingAt clock: UInt64) {
    self.init(source: source, resumingAtNanoseconds: clock &* 1_000_000_000)
  }

  init(source: CacheClockSource, resumingAtNanoseconds nanoseconds: UInt64) {
    self.source = source
    self.baseNanoseconds = nanoseconds
    self.baseMonotonic = source.monotonicNanoseconds()
  }

  /// The cache clock in nanoseconds: what a next image resumes from, so
  /// that upgrades in quick succession do not each lose a fraction of a
  /// second.
  func nowNanoseconds() -> UInt64 {
    baseNanoseconds &+ (source.monotonicNanoseconds() &- baseMonotonic)
  }

  /// Seconds on the cache clock, saturating at UInt32.max (136 years).
  func now() -> UInt32 {
    UInt32(clamping: nowNanoseconds() / 1_000_000_000)
  }

  /// memcached's `realtime(EXPTIME_TO_POSITIVE_TIME(exptime))` on the cache
  /// clock: 0 never expires, up to 30 days is relative, beyond that an
  /// absolute unix time (converted with the wall clock now), negative or
  /// past means already expired (1 is always in the past).
  func expiry(_ exptime: Int64, now: UInt32) -> UInt32 {
    if exptime == 0 { return 0 }
    var relative = exptime < 0 ? CacheLimits.relativeExptimeMax + 1 : exptime
    if relative > CacheLimits.relativeExptimeMax {
      relative -= source.wallSeconds()
      if relative <= 0 { return 1 }
    }
    return UInt32(clamping: Int64(now) + relative)
  }
}
