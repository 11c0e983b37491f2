/// A borrowed view of one item, valid only inside the closure it is passed
/// to (the store lock is held meanwhile: copy what you need, do no I/O).
public struct CacheItemView {
  /// The key bytes.
  public let key: UnsafeRawBufferPointer
  /// The value bytes.
  public let value: UnsafeRawBufferPointer
  /// The client flags.
  public let flags: UInt32
  /// The item's CAS unique.
  public let cas: UInt64

  init(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer, flags: UInt32, cas: UInt64) {
    self.key = key
    self.value = value
    self.flags = flags
    self.cas = cas
  }
}

extension CacheStore {
  /// get/gets: calls `body` with the live item for `key`, under the lock.
  /// Counts a hit or a miss and refreshes the item's LRU position (not
  /// while frozen). Keys of 0 or more than 250 bytes are misses.
  /// - Returns: `body`'s result, or nil when the key is absent.
  public func get<R>(_ key: UnsafeRawBufferPointer, _ body: (CacheItemView) -> R) -> R? {
    guard !key.isEmpty && key.count <= CacheLimits.maxKeyLength else { return nil }
    return locked { core in
      let item = core.lookup(key, touch: nil)
      return item == 0 ? nil : body(core.view(item))
    }
  }

  /// `get` for a caller that only looks at the item: not generic, so a
  /// caller in another module pays no generic metadata lookup (`R?`) per
  /// call, which on a cache hit costs about as much as the lookup itself.
  /// - Returns: whether the key was present (`body` was called).
  public func read(_ key: UnsafeRawBufferPointer, _ body: (CacheItemView) -> Void) -> Bool {
    guard !key.isEmpty && key.count <= CacheLimits.maxKeyLength else { return false }
    return locked { core in
      let item = core.lookup(key, touch: nil)
      if item == 0 { return false }
      body(core.view(item))
      return true
    }
  }

  /// `getAndTouch` without a result type, for the reason `read` has none.
  /// - Returns: whether the key was present (`body` was called).
  /// - Throws: `.frozen`, `.badKey`.
  public func readAndTouch(
    _ key: UnsafeRawBufferPointer, exptime: Int64, _ body: (CacheItemView) -> Void
  ) throws(CacheOperationError) -> Bool {
    try mutating(key) { core in
      let item = core.lookup(key, touch: exptime)
      if item == 0 { return false }
      body(core.view(item))
      return true
    }
  }

  /// gat/gats: like `get`, and sets the item's expiry to `exptime`
  /// (memcached semantics: 0 never, ≤ 30 days relative, else unix time,
  /// negative already expired).
  /// - Throws: `.frozen`, `.badKey`.
  public func getAndTouch<R>(
    _ key: UnsafeRawBufferPointer, exptime: Int64, _ body: (CacheItemView) -> R
  )
    throws(CacheOperationError) -> R?
  {
    try mutating(key) { core in
      let item = core.lookup(key, touch: exptime)
      return item == 0 ? nil : body(core.view(item))
    }
  }

  /// set/add/replace/append/prepend/cas.
  /// - Parameters:
  ///   - mode: the command.
  ///   - key: 1...250 bytes.
  ///   - value: the data block, without its "\r\n".
  ///   - flags: client flags (ignored by append/prepend, which keep the old ones).
  ///   - exptime: memcached exptime (ignored by append/prepend).
  /// - Returns: memcached's verdict.
  /// - Throws: `.frozen`, `.badKey`, `.tooLarge`, `.outOfMemory`. A failed
  ///   `set` also removes the old item, as memcached does.
  public func store(
    _ mode: StoreMode, key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer,
    flags: UInt32 = 0,
    exptime: Int64 = 0
  ) throws(CacheOperationError) -> StoreResult {
    try mutating(key) { core throws(CacheOperationError) in
      try core.store(mode, key: key, value: value, flags: flags, exptime: exptime)
    }
  }

  /// Whether an item with this key and value length fits the item size
  /// limit; the protocol layer asks before reading a data block, to refuse
  /// it early and swallow it as memcached does.
  public func fits(keyLength: Int, valueLength: Int) -> Bool {
    ItemField.headerSize + keyLength + valueLength <= itemSizeMax
  }

  /// Counts a storage command refused as too large before its data was
  /// read, and (for `set`) drops the old item, as memcached does. A no-op
  /// while frozen.
  public func refuseTooLarge(_ key: UnsafeRawBufferPointer, mode: StoreMode) {
    _ = try? mutating(key) { core in
      core.count(.storeTooLarge)
      guard mode == .set else { return }
      let item = core.find(key, hash: keyHash(key))
      if item != 0 { core.unlink(item, reason: .removed) }
    }
  }

  /// delete.
  /// - Returns: whether the key was present.
  /// - Throws: `.frozen`, `.badKey`.
  public func delete(_ key: UnsafeRawBufferPointer) throws(CacheOperationError) -> Bool {
    try mutating(key) { $0.delete(key) }
  }

  /// touch: sets the expiry of a present item.
  /// - Returns: whether the key was present.
  /// - Throws: `.frozen`, `.badKey`.
  public func touch(_ key: UnsafeRawBufferPointer, exptime: Int64) throws(CacheOperationError)
    -> Bool
  {
    try mutating(key) { $0.touch(key, exptime: exptime) }
  }

  /// incr (`increment` true, wraps at 2^64) or decr (floors at 0).
  /// - Returns: the new value, or nil when the key is absent.
  /// - Throws: `.frozen`, `.badKey`, `.nonNumeric`, `.outOfMemory`.
  public func arithmetic(_ key: UnsafeRawBufferPointer, increment: Bool, delta: UInt64)
    throws(CacheOperationError) -> UInt64?
  {
    try mutating(key) { core throws(CacheOperationError) in
      try core.arithmetic(key, increment: increment, delta: delta)
    }
  }

  /// flush_all [delay]: every item stored (or last used) before now, or
  /// before `delay` (memcached exptime) when positive, becomes invisible.
  /// O(1): dead items are found lazily.
  /// - Throws: `.frozen`.
  public func flushAll(delay: Int64 = 0) throws(CacheOperationError) {
    try mutating(nil) { $0.flush(delay: delay) }
  }

  /// The counters (kept in the region: they survive a handover).
  public func stats() -> CacheStats {
    locked { core in
      var stats = CacheStats()
      for counter in StatCounter.allCases { stats.counters[counter.name] = core.stat(counter) }
      stats.limitMaxBytes = UInt64(limitMaxBytes)
      stats.cacheClock = UInt64(core.now)
      return stats
    }
  }

  /// Counts a `flush_all` that was refused (memcached's `-F`), in
  /// `cmd_flush` as memcached counts it. A no-op while frozen.
  public func countRefusedFlush() {
    _ = try? mutating(nil) { core in core.count(.cmdFlush) }
  }

  /// stats reset: zeroes the event counters (not curr_items or bytes).
  /// A no-op while frozen.
  public func resetStats() {
    _ = try? mutating(nil) { core in
      for counter in StatCounter.allCases where counter != .currItems && counter != .bytes {
        core.memory.setU64(Header.stats + counter.rawValue * 8, 0)
      }
      for classId in 1...core.geometry.classCount {
        core.memory.setU64(Header.classEvictions + (classId - 1) * 8, 0)
        for counter in ClassCounter.allCases {
          core.memory.setU64(Header.classCounter(counter, classId), 0)
        }
      }
    }
  }
}

extension StoreCore {
  func view(_ item: Int) -> CacheItemView {
    CacheItemView(
      key: key(item), value: value(item), flags: memory.u32(item + ItemField.flags),
      cas: memory.u64(item + ItemField.cas))
  }
}

/// A snapshot of the store's counters, named as in memcached's `stats`.
public struct CacheStats: Sendable, Equatable {
  /// Counter values by memcached name: curr_items, total_items, bytes,
  /// evictions, reclaimed, cmd_get, cmd_set, cmd_flush, cmd_touch,
  /// get_hits, get_misses, get_expired, get_flushed, delete_hits,
  /// delete_misses, incr_hits, incr_misses, decr_hits, decr_misses,
  /// cas_hits, cas_misses, cas_badval, touch_hits, touch_misses,
  /// store_too_large, store_no_memory, damaged (damage found in the region
  /// and cut away), slabs_moved (pages moved between size classes).
  public var counters: [String: UInt64] = [:]
  /// Bytes of slab pages.
  public var limitMaxBytes: UInt64 = 0
  /// The cache clock, seconds.
  public var cacheClock: UInt64 = 0

  /// The counter named `name`, 0 if unknown.
  public subscript(_ name: String) -> UInt64 { counters[name] ?? 0 }

  /// Counter names in memcached's `stats` order.
  public static let names: [String] = StatCounter.allCases.map(\.name)
}

extension StatCounter {
  var name: String {
    switch self {
    case .currItems: "curr_items"
    case .totalItems: "total_items"
    case .bytes: "bytes"
    case .evictions: "evictions"
    case .reclaimed: "reclaimed"
    case .cmdGet: "cmd_get"
    case .cmdSet: "cmd_set"
    case .cmdFlush: "cmd_flush"
    case .cmdTouch: "cmd_touch"
    case .getHits: "get_hits"
    case .getMisses: "get_misses"
    case .getExpired: "get_expired"
    case .getFlushed: "get_flushed"
    case .deleteHits: "delete_hits"
    case .deleteMisses: "delete_misses"
    case .incrHits: "incr_hits"
    case .incrMisses: "incr_misses"
    case .decrHits: "decr_hits"
    case .decrMisses: "decr_misses"
    case .casHits: "cas_hits"
    case .casMisses: "cas_misses"
    case .casBadval: "cas_badval"
    case .touchHits: "touch_hits"
    case .touchMisses: "touch_misses"
    case .storeTooLarge: "store_too_large"
    case .storeNoMemory: "store_no_memory"
    case .damaged: "damaged"
    case .slabsMoved: "slabs_moved"
    case .evictedUnfetched: "evicted_unfetched"
    case .expiredUnfetched: "expired_unfetched"
    }
  }
}
