// The figures memcached's `stats items` and `stats slabs` print for each
// size class, read from the class table (and the per-class eviction
// counters in the header's reserved words, so they survive an upgrade).

/// One size class as `stats items` / `stats slabs` report it.
public struct CacheClassStats: Sendable, Equatable {
  /// The class id, from 1, as memcached numbers its slab classes.
  public var classId: Int
  /// Bytes per chunk (memcached's `chunk_size`).
  public var chunkSize: Int
  /// Chunks in one page (`chunks_per_page`).
  public var chunksPerPage: Int
  /// Pages the class holds (`total_pages`).
  public var pages: Int
  /// Live items (`items:N:number`, `N:used_chunks`).
  public var items: Int
  /// Chunks on the free list (`free_chunks`).
  public var freeChunks: Int
  /// Bytes the items take: header, key and value (`mem_requested`).
  public var requestedBytes: Int
  /// Seconds since the least recently used item was last accessed (`age`).
  public var oldestAge: UInt32
  /// Items evicted from this class to make room (`evicted`).
  public var evicted: UInt64
  /// Of those, the items that had an expiry time (`evicted_nonzero`).
  public var evictedNonzero: UInt64 = 0
  /// Of those, the items never fetched (`evicted_unfetched`).
  public var evictedUnfetched: UInt64 = 0
  /// Expired items whose chunk was taken for another (`reclaimed`).
  public var reclaimed: UInt64 = 0
  /// Of those, the items never fetched (`expired_unfetched`).
  public var expiredUnfetched: UInt64 = 0
}

/// The per-class counters kept after the class table (each a u64 per class).
enum ClassCounter: Int, CaseIterable {
  case evictedNonzero, evictedUnfetched, reclaimed, expiredUnfetched
}

extension Header {
  /// u64 × maxClasses: evictions per class (class id - 1), in the reserved
  /// words (0 in a region an older image formatted: "none recorded").
  static let classEvictions = 496
  /// u64 × maxClasses × `ClassCounter.allCases.count`, after the class table
  /// (zero in a region an older image formatted: "none recorded", and
  /// never read by it, so no format bump).
  static let classCounters = classTable + CacheLimits.maxClasses * ClassField.size

  /// The offset of `counter` for `classId`.
  static func classCounter(_ counter: ClassCounter, _ classId: Int) -> Int {
    classCounters + (counter.rawValue * CacheLimits.maxClasses + classId - 1) * 8
  }
}

extension CacheStore {
  /// The size of one slab page (memcached's `slab_page_size`, 1 MB for `-I 1m`).
  public var pageSize: Int { locked { $0.geometry.pageSize } }

  /// Hash index buckets (a power of two, fixed at format time).
  public var hashBucketCount: Int { locked { $0.geometry.bucketCount } }

  /// Slab pages no class holds yet (`slab_global_page_pool`).
  public var freePageCount: Int {
    locked { core in core.geometry.pageCount - Int(core.memory.u64(Header.pagesUsed)) }
  }

  /// Slab pages in use by any class, times the page size (`total_malloced`).
  public var bytesInPages: Int {
    locked { core in Int(core.memory.u64(Header.pagesUsed)) * core.geometry.pageSize }
  }

  /// Every class that holds at least one page or has evicted, in class order.
  public func classStats() -> [CacheClassStats] {
    locked { core in
      (1...core.geometry.classCount).compactMap { classId in
        let entry = core.geometry.classEntry(classId)
        let pages = Int(core.memory.u64(entry + ClassField.pageCount))
        let evicted = core.memory.u64(Header.classEvictions + (classId - 1) * 8)
        let counter = { core.memory.u64(Header.classCounter($0, classId)) }
        guard pages > 0 || evicted > 0 || counter(.reclaimed) > 0 else { return nil }
        let items = Int(core.memory.u64(entry + ClassField.itemCount))
        let tail = core.memory.off(entry + ClassField.lruTail)
        return CacheClassStats(
          classId: classId, chunkSize: core.geometry.chunkSizes[classId - 1],
          chunksPerPage: Int(core.memory.u64(entry + ClassField.perPage)), pages: pages,
          items: items, freeChunks: Int(core.memory.u64(entry + ClassField.freeCount)),
          requestedBytes: core.requestedBytes(classId, limit: items),
          oldestAge: tail == 0 ? 0 : core.now &- core.memory.u32(tail + ItemField.time),
          evicted: evicted, evictedNonzero: counter(.evictedNonzero),
          evictedUnfetched: counter(.evictedUnfetched), reclaimed: counter(.reclaimed),
          expiredUnfetched: counter(.expiredUnfetched))
      }
    }
  }
}

extension StoreCore {
  /// Counts the eviction of `item` from `classId` for `stats items`, as
  /// memcached's do_item_alloc_pull does: every one, those with an
  /// expiry time, those never fetched.
  func countClassEviction(_ item: Int, _ classId: Int) {
    let offset = Header.classEvictions + (classId - 1) * 8
    memory.setU64(offset, memory.u64(offset) &+ 1)
    if memory.u32(item + ItemField.exptime) != 0 { countClass(.evictedNonzero, classId) }
    if !wasFetched(item) {
      countClass(.evictedUnfetched, classId)
      count(.evictedUnfetched)
    }
  }

  /// Counts the reclaim of expired `item`'s chunk in `classId`.
  func countClassReclaim(_ item: Int, _ classId: Int) {
    countClass(.reclaimed, classId)
    if !wasFetched(item) {
      countClass(.expiredUnfetched, classId)
      count(.expiredUnfetched)
    }
  }

  private func countClass(_ counter: ClassCounter, _ classId: Int) {
    let offset = Header.classCounter(counter, classId)
    memory.setU64(offset, memory.u64(offset) &+ 1)
  }

  private func wasFetched(_ item: Int) -> Bool {
    memory.u8(item + ItemField.metaFlags) & ItemField.fetched != 0
  }

  /// The bytes of the items on `classId`'s LRU, walking at most `limit`
  /// items from the head (a damaged list cannot make the walk loop).
  func requestedBytes(_ classId: Int, limit: Int) -> Int {
    var total = 0
    var item = memory.off(geometry.classEntry(classId) + ClassField.lruHead)
    var left = limit
    while item != 0 && left > 0 && item >= geometry.slabOffset && item < geometry.slabEnd {
      total += totalSize(item)
      item = memory.off(item + ItemField.lruNext)
      left -= 1
    }
    return total
  }
}

/// One item as `stats cachedump` lists it.
public struct CacheDumpEntry: Sendable, Equatable {
  /// The key bytes.
  public var key: [UInt8]
  /// The value length.
  public var valueLength: Int
  /// The expiry as a unix time, 0 for never (memcached prints it so).
  public var expiresAt: UInt64
}

extension CacheStore {
  /// `stats cachedump`: the items of `classId` from the most recently used,
  /// at most `limit` of them (0: no limit) and at most `byteBudget` bytes
  /// of keys, as memcached's item_cachedump stops at 2 MB of output.
  public func cacheDump(classId: Int, limit: Int, byteBudget: Int) -> [CacheDumpEntry] {
    locked { core in
      guard (1...core.geometry.classCount).contains(classId) else { return [] }
      let entry = core.geometry.classEntry(classId)
      let epoch = core.memory.u64(Header.clockEpochWallSeconds)
      var entries: [CacheDumpEntry] = []
      var item = core.memory.off(entry + ClassField.lruHead)
      var left = Int(core.memory.u64(entry + ClassField.itemCount))
      var bytes = 0
      while item != 0 && left > 0 && item >= core.geometry.slabOffset
        && item < core.geometry.slabEnd && (limit == 0 || entries.count < limit)
      {
        let key = Array(core.key(item))
        bytes += key.count + 40
        if bytes > byteBudget { break }
        let exptime = UInt64(core.memory.u32(item + ItemField.exptime))
        entries.append(
          CacheDumpEntry(
            key: key, valueLength: core.valueLength(item),
            expiresAt: exptime == 0 ? 0 : exptime &+ epoch))
        item = core.memory.off(item + ItemField.lruNext)
        left -= 1
      }
      return entries
    }
  }
}
