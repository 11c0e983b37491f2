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
  /// Descriptors kept free besides the connections, `stats` reserved_fds.
  public var reservedDescriptors = 0
  /// Commands a connection runs in one go before letting the others of its
  /// event loop run (`-R`, memcached's reqs_per_event).
  public var requestsPerEvent = 20
  /// Whether `flush_all` may be used (`-F` turns it off).
  public var flushEnabled = true

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
  /// The listener as `stats conns` shows it, once it is active.
  let listenerStatus = Mutex<ConnectionStatus?>(nil)
  /// `me` commands run (memcached 1.6.18's `cmd_meta` counts only those).
  let metaCommands = Atomic<Int>(0)
  /// Times a connection stopped after `-R` commands to let others run.
  let connectionYields = Atomic<Int>(0)
  /// Times the listener stopped accepting (out of descriptors or memory:
  /// `AcceptOverloadHandler`), memcached's listen_disabled_num.
  let listenDisabledCount = Atomic<Int>(0)
  /// Microseconds spent so, the pause in progress excluded.
  let listenDisabledMicroseconds = Atomic<Int64>(0)
  /// `monotonicMicroseconds()` when the pause in progress began, 0 if none.
  let listenDisabledSince = Atomic<Int64>(0)
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

  /// The lines of `stats`: memcached 1.6.18's keys, in its order, as it
  /// prints them without an LRU crawler, LRU maintainer or segmented LRU
  /// (`-o no_lru_crawler,no_lru_maintainer`), which is what kho-cache is.
  /// Figures kho-cache has no counterpart for are constants (README.md
  /// says which and why); its own figures are in `stats kho`.
  func statsLines() -> [(String, String)] {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    let store = self.store.stats()
    let current = currConnections.load(ordering: .relaxed)
    var lines: [(String, String)] = [
      ("pid", "\(getpid())"),
      ("uptime", "\(Int64(ts.tv_sec) - startedAt)"),
      ("time", "\(time(nil))"),
      ("version", configuration.version),
      // The event library's version: SwiftNIO's event loops, not libevent.
      ("libevent", "swift-nio"),
      ("pointer_size", "64"),
      ("rusage_user", formatTime(usage.ru_utime)),
      ("rusage_system", formatTime(usage.ru_stime)),
      ("max_connections", "\(configuration.maxConnections)"),
      ("curr_connections", "\(current)"),
      ("total_connections", "\(totalConnections.load(ordering: .relaxed))"),
      ("rejected_connections", "\(rejectedConnections.load(ordering: .relaxed))"),
      // A handler per open connection plus the listener's.
      ("connection_structures", "\(current + 1)"),
      // No response objects or pooled read buffers: replies and input
      // are per-connection NIO buffers.
      ("response_obj_oom", "0"), ("response_obj_count", "0"), ("response_obj_bytes", "0"),
      ("read_buf_count", "0"), ("read_buf_bytes", "0"), ("read_buf_bytes_free", "0"),
      ("read_buf_oom", "0"),
      ("reserved_fds", "\(configuration.reservedDescriptors)"),
    ]
    for name in [
      "cmd_get", "cmd_set", "cmd_flush", "cmd_touch",
    ] {
      lines.append((name, "\(store[name])"))
    }
    lines.append(("cmd_meta", "\(metaCommands.load(ordering: .relaxed))"))
    for name in [
      "get_hits", "get_misses", "get_expired", "get_flushed", "delete_misses", "delete_hits",
      "incr_misses", "incr_hits", "decr_misses", "decr_hits", "cas_misses", "cas_hits",
      "cas_badval", "touch_hits", "touch_misses", "store_too_large", "store_no_memory",
    ] {
      lines.append((name, "\(store[name])"))
    }
    let disabled = listenDisabledSince.load(ordering: .relaxed)
    let disabledNow = disabled > 0 ? max(0, monotonicMicroseconds() - disabled) : 0
    lines += [
      // No SASL or ascii authentication.
      ("auth_cmds", "0"), ("auth_errors", "0"),
      ("bytes_read", "\(bytesRead.load(ordering: .relaxed))"),
      ("bytes_written", "\(bytesWritten.load(ordering: .relaxed))"),
      ("limit_maxbytes", "\(store.limitMaxBytes)"),
      ("accepting_conns", disabled > 0 ? "0" : "1"),
      ("listen_disabled_num", "\(listenDisabledCount.load(ordering: .relaxed))"),
      (
        "time_in_listen_disabled_us",
        "\(listenDisabledMicroseconds.load(ordering: .relaxed) + disabledNow)"
      ),
      ("threads", "\(configuration.threads)"),
      ("conn_yields", "\(connectionYields.load(ordering: .relaxed))"),
      ("hash_power_level", "\(self.store.hashBucketCount.trailingZeroBitCount)"),
      ("hash_bytes", "\(self.store.hashBucketCount * 8)"),
      // The index is sized at format time and never grows.
      ("hash_is_expanding", "0"),
      // Pages move between classes whole and only when empty
      // (Rebalance.swift): nothing is rescued, evicted or waited for.
      ("slab_reassign_rescues", "0"), ("slab_reassign_chunk_rescues", "0"),
      ("slab_reassign_evictions_nomem", "0"), ("slab_reassign_inline_reclaim", "0"),
      ("slab_reassign_busy_items", "0"), ("slab_reassign_busy_deletes", "0"),
      ("slab_reassign_running", "0"),
      ("slabs_moved", "\(store["slabs_moved"])"),
      // Allocation failures: the arena is mapped at start; a full store
      // evicts or answers store_no_memory.
      ("malloc_fails", "0"),
      // No `watch` log stream.
      ("log_worker_dropped", "0"), ("log_worker_written", "0"), ("log_watcher_skipped", "0"),
      ("log_watcher_sent", "0"), ("log_watchers", "0"),
      // No NAPI-id thread placement.
      ("unexpected_napi_ids", "0"), ("round_robin_fallback", "0"),
      ("bytes", "\(store["bytes"])"),
      ("curr_items", "\(store["curr_items"])"),
      ("total_items", "\(store["total_items"])"),
      // Slab pages no class holds yet: where every class takes its next.
      ("slab_global_page_pool", "\(self.store.freePageCount)"),
      ("expired_unfetched", "\(store["expired_unfetched"])"),
      ("evicted_unfetched", "\(store["evicted_unfetched"])"),
      ("evictions", "\(store["evictions"])"),
      ("reclaimed", "\(store["reclaimed"])"),
      // No LRU crawler, no reference counts left on an item at rest.
      ("crawler_reclaimed", "0"), ("crawler_items_checked", "0"), ("lrutail_reflocked", "0"),
    ]
    return lines
  }

  /// `stats reset` of the counters kept by the process, as memcached's
  /// stats_reset zeroes its `stats` and the threads' (a pause in
  /// progress goes on counting from now).
  func resetProcessStats() {
    metaCommands.store(0, ordering: .relaxed)
    connectionYields.store(0, ordering: .relaxed)
    listenDisabledCount.store(0, ordering: .relaxed)
    listenDisabledMicroseconds.store(0, ordering: .relaxed)
    if listenDisabledSince.load(ordering: .relaxed) > 0 {
      listenDisabledSince.store(monotonicMicroseconds(), ordering: .relaxed)
    }
  }

  /// `stats kho`: kho-cache's own figures, apart so that `stats` keeps
  /// exactly memcached's keys.
  func khoStatsLines() -> [(String, String)] {
    let store = self.store.stats()
    return [
      ("frozen", self.store.isFrozen ? "1" : "0"),
      ("cache_clock", "\(store.cacheClock)"),
      ("kho_format_version", "\(CacheStore.formatVersion)"),
      // Damage found in a handed-over region and cut away.
      ("damaged", "\(store["damaged"])"),
    ]
  }

  private func formatTime(_ tv: timeval) -> String {
    let micros = String(tv.tv_usec)
    return "\(tv.tv_sec)." + String(repeating: "0", count: max(0, 6 - micros.count)) + micros
  }
}
