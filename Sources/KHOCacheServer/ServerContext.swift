import KHOCacheStore
import NIOCore
import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Settings of the protocol server.
public struct CacheServerConfiguration: Sendable {
  /// Connections beyond this are refused with
  /// "ERROR Too many open connections", as memcached does (`-c`).
  public var maxConnections: Int = 1024
  /// Event loop threads, reported by `stats` (`-t`).
  public var threads: Int = 4
  /// The string after "VERSION ".
  public var version: String = "1.6.18-kho-cache"
  /// How long a mutation waits while the store is frozen for a handover
  /// before it is answered with "SERVER_ERROR" (see `MemcacheHandler`).
  public var frozenWaitLimit: TimeAmount = .seconds(5)
  /// How often a parked mutation retries while the store is frozen.
  public var frozenRetryInterval: TimeAmount = .milliseconds(1)
  /// Replies a connection may have queued (in its own buffer and in the
  /// channel, not yet taken by the socket) before it stops running
  /// commands and reading: the channel's high write watermark. A client
  /// that does not read its replies holds at most this much, plus one
  /// value, of the server's memory (memcached's bound is similar: it
  /// stops processing while a connection's replies are unsent).
  public var pendingOutputLimit: Int = 4 << 20
  /// Unsent replies all connections together may hold before those that
  /// have some in flight wait for them to drain (see
  /// `MemcacheHandler.repliesFit`): what bounds the server when many
  /// clients do not read, each then holding about one flush (at most
  /// `outputFlushThreshold` plus one value) instead of `pendingOutputLimit`.
  public var pendingOutputBudget: Int = 64 << 20
  /// Replies are handed to the channel (and written) whenever this many
  /// bytes have gathered, not only at the end of a read, so that a long
  /// pipeline is answered as it runs and its memory is bounded.
  public var outputFlushThreshold: Int = 256 << 10
  /// Reported by `stats settings` (`-p`, `-l`).
  public var tcpPort: Int = 11211
  /// Reported by `stats settings` as `inter`.
  public var listenAddress: String = "127.0.0.1"
  /// Whether the `shutdown` command may stop the server (`-A`).
  public var shutdownEnabled = false

  /// The defaults above (memcached's).
  public init() {}
}

/// What every connection of one server shares: the store, the settings,
/// the connection counters.
public final class CacheServerContext: Sendable {
  /// The store behind every connection.
  public let store: CacheStore
  /// The settings.
  public let configuration: CacheServerConfiguration
  let currConnections = Atomic<Int>(0)
  let totalConnections = Atomic<Int>(0)
  let rejectedConnections = Atomic<Int>(0)
  let bytesRead = Atomic<Int>(0)
  let bytesWritten = Atomic<Int>(0)
  /// Reply bytes handed to the connections' channels, not yet written.
  let unsentReplyBytes = Atomic<Int>(0)
  let startedAt: Int64
  /// A descriptor (on /dev/null) held in reserve for accept(2) failing with
  /// EMFILE: see `AcceptOverloadHandler`. -1 while given up.
  let reserveDescriptor = Atomic<Int32>(-1)
  /// Connections accepted into a freed reserve descriptor that are still
  /// to be told "ERROR Too many open connections".
  let refusalsOwed = Atomic<Int>(0)
  /// Every admitted connection, for a handover to take them all along.
  public let connections = ConnectionRegistry()

  /// A context for `store` with `configuration`.
  public init(store: CacheStore, configuration: CacheServerConfiguration = .init()) {
    self.store = store
    self.configuration = configuration
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    self.startedAt = Int64(ts.tv_sec)
  }

  // A context that goes away must not leave its reserve descriptor open
  // (found by the memcache fuzzer: one context per input ran out of fds).
  deinit {
    let fd = reserveDescriptor.load(ordering: .relaxed)
    if fd >= 0 { close(fd) }
  }

  /// Connections open now.
  public var openConnections: Int { currConnections.load(ordering: .relaxed) }

  /// Counts a new connection; false (and nothing counted but the refusal)
  /// when the limit is reached.
  func admit() -> Bool {
    let now = currConnections.wrappingAdd(1, ordering: .relaxed).newValue
    guard now <= configuration.maxConnections else {
      currConnections.wrappingSubtract(1, ordering: .relaxed)
      rejectedConnections.wrappingAdd(1, ordering: .relaxed)
      return false
    }
    totalConnections.wrappingAdd(1, ordering: .relaxed)
    return true
  }

  func release() { currConnections.wrappingSubtract(1, ordering: .relaxed) }

  /// Opens the reserve descriptor unless it is held (cheap when it is).
  func acquireReserveDescriptor() {
    guard reserveDescriptor.load(ordering: .relaxed) < 0 else { return }
    let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return }  // still out of descriptors: next time
    if !reserveDescriptor.compareExchange(expected: -1, desired: fd, ordering: .relaxed).exchanged {
      close(fd)
    }
  }

  /// Closes the reserve descriptor, if held, and owes the next accepted
  /// connection a refusal; false if there was none to give.
  func releaseReserveDescriptorForRefusal() -> Bool {
    let fd = reserveDescriptor.exchange(-1, ordering: .relaxed)
    guard fd >= 0 else { return false }
    close(fd)
    refusalsOwed.wrappingAdd(1, ordering: .relaxed)
    return true
  }

  /// Whether this new connection pays a refusal owed (see above).
  func takeOwedRefusal() -> Bool {
    var owed = refusalsOwed.load(ordering: .relaxed)
    while owed > 0 {
      let (exchanged, current) = refusalsOwed.compareExchange(
        expected: owed, desired: owed - 1, ordering: .relaxed)
      if exchanged {
        rejectedConnections.wrappingAdd(1, ordering: .relaxed)
        return true
      }
      owed = current
    }
    return false
  }

  /// The lines of `stats`, in memcached's order, each "STAT name value".
  func statsLines() -> [(String, String)] {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    let store = self.store.stats()
    var lines: [(String, String)] = [
      ("pid", "\(getpid())"),
      ("uptime", "\(Int64(ts.tv_sec) - startedAt)"),
      ("time", "\(time(nil))"),
      ("version", configuration.version),
      ("pointer_size", "64"),
      ("rusage_user", formatTime(usage.ru_utime)),
      ("rusage_system", formatTime(usage.ru_stime)),
      ("max_connections", "\(configuration.maxConnections)"),
      ("curr_connections", "\(currConnections.load(ordering: .relaxed))"),
      ("total_connections", "\(totalConnections.load(ordering: .relaxed))"),
      ("rejected_connections", "\(rejectedConnections.load(ordering: .relaxed))"),
    ]
    for name in [
      "cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "get_hits", "get_misses", "get_expired",
      "get_flushed", "delete_misses", "delete_hits", "incr_misses", "incr_hits", "decr_misses",
      "decr_hits",
      "cas_misses", "cas_hits", "cas_badval", "touch_hits", "touch_misses", "store_too_large",
      "store_no_memory",
    ] {
      lines.append((name, "\(store[name])"))
    }
    lines += [
      ("bytes_read", "\(bytesRead.load(ordering: .relaxed))"),
      ("bytes_written", "\(bytesWritten.load(ordering: .relaxed))"),
      ("limit_maxbytes", "\(store.limitMaxBytes)"),
      ("threads", "\(configuration.threads)"),
      ("frozen", self.store.isFrozen ? "1" : "0"),
      ("cache_clock", "\(store.cacheClock)"),
      ("kho_format_version", "\(CacheStore.formatVersion)"),
      ("bytes", "\(store["bytes"])"),
      ("curr_items", "\(store["curr_items"])"),
      ("total_items", "\(store["total_items"])"),
      ("evictions", "\(store["evictions"])"),
      ("reclaimed", "\(store["reclaimed"])"),
      ("slabs_moved", "\(store["slabs_moved"])"),
      // Damage found in a handed-over region and cut away (kho-cache only).
      ("damaged", "\(store["damaged"])"),
    ]
    return lines
  }

  private func formatTime(_ tv: timeval) -> String {
    let micros = String(tv.tv_usec)
    return "\(tv.tv_sec)." + String(repeating: "0", count: max(0, 6 - micros.count)) + micros
  }
}
