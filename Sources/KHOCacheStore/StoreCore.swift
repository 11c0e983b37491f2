/// The unlocked core: hash index, per-class LRUs, slab allocator, counters,
/// all in the region. Every method is called with the store lock held.
final class StoreCore {
  let memory: RegionMemory
  let geometry: Geometry
  let clock: CacheClock
  /// Mirrors the header's state word; checked by every mutation.
  var frozen = false
  /// The cache clock of the operation in progress (set by `tick`).
  var now: UInt32 = 0

  init(memory: RegionMemory, geometry: Geometry, clock: CacheClock) {
    self.memory = memory
    self.geometry = geometry
    self.clock = clock
  }

  // MARK: Time and counters

  /// Reads the clock for this operation and records it in the header, so
  /// that the next image resumes from it (not while frozen: then the
  /// header is fixed).
  func tick() {
    now = clock.now()
    if !frozen && UInt64(now) > memory.u64(Header.clock) {
      memory.setU64(Header.clock, UInt64(now))
    }
  }

  @inline(__always) func count(_ counter: StatCounter, _ delta: Int = 1) {
    guard !frozen else { return }
    let offset = Header.stats + counter.rawValue * 8
    memory.setU64(offset, memory.u64(offset) &+ UInt64(bitPattern: Int64(delta)))
  }

  func stat(_ counter: StatCounter) -> UInt64 { memory.u64(Header.stats + counter.rawValue * 8) }

  func nextCas() -> UInt64 {
    let cas = memory.u64(Header.casCounter) &+ 1
    memory.setU64(Header.casCounter, cas)
    return cas
  }

  // MARK: Item fields

  @inline(__always) func keyLength(_ item: Int) -> Int {
    Int(memory.u8(item + ItemField.keyLength))
  }
  @inline(__always) func valueLength(_ item: Int) -> Int {
    Int(memory.u32(item + ItemField.valueLength))
  }
  @inline(__always) func key(_ item: Int) -> UnsafeRawBufferPointer {
    memory.bytes(item + ItemField.headerSize, keyLength(item))
  }
  @inline(__always) func value(_ item: Int) -> UnsafeRawBufferPointer {
    memory.bytes(item + ItemField.headerSize + keyLength(item), valueLength(item))
  }
  @inline(__always) func mutableValue(_ item: Int) -> UnsafeMutableRawBufferPointer {
    memory.mutableBytes(item + ItemField.headerSize + keyLength(item), valueLength(item))
  }
  @inline(__always) func totalSize(_ item: Int) -> Int {
    ItemField.headerSize + keyLength(item) + valueLength(item)
  }
  @inline(__always) func classId(_ item: Int) -> Int { Int(memory.u8(item + ItemField.classId)) }
  @inline(__always) func isPinned(_ item: Int) -> Bool {
    memory.u8(item + ItemField.itemFlags) & ItemField.pinned != 0
  }
  func setPinned(_ item: Int, _ pinned: Bool) {
    let flags = memory.u8(item + ItemField.itemFlags)
    memory.setU8(
      item + ItemField.itemFlags, pinned ? flags | ItemField.pinned : flags & ~ItemField.pinned)
  }

  /// Expired, or killed by flush_all (memcached's `item_is_flushed`).
  func isDead(_ item: Int) -> Bool { isExpired(item) || isFlushed(item) }

  func isExpired(_ item: Int) -> Bool {
    let exptime = memory.u32(item + ItemField.exptime)
    return exptime != 0 && exptime <= now
  }

  func isFlushed(_ item: Int) -> Bool {
    let oldestLive = memory.u64(Header.oldestLive)
    guard oldestLive != 0 && oldestLive <= UInt64(now) else { return false }
    if UInt64(memory.u32(item + ItemField.time)) <= oldestLive { return true }
    let oldestCas = memory.u64(Header.oldestCas)
    let cas = memory.u64(item + ItemField.cas)
    return oldestCas != 0 && cas < oldestCas
  }

  // MARK: Hash index

  /// The live item with this key, or 0. Dead items met on the way are
  /// unlinked (unless frozen) and counted as expired/flushed gets when
  /// `countDead` is set.
  func find(_ key: UnsafeRawBufferPointer, hash: UInt32, countDead: Bool = false) -> Int {
    var item = memory.off(geometry.bucket(hash))
    while item != 0 {
      if memory.u32(item + ItemField.hash) == hash && keyLength(item) == key.count
        && keysEqual(self.key(item), key)
      {
        guard isDead(item) else { return item }
        if countDead { count(isExpired(item) ? .getExpired : .getFlushed) }
        if !frozen { unlink(item, reason: .reclaimed) }
        return 0
      }
      item = memory.off(item + ItemField.hashNext)
    }
    return 0
  }

  func hashInsert(_ item: Int) {
    let bucket = geometry.bucket(memory.u32(item + ItemField.hash))
    memory.setOff(item + ItemField.hashNext, memory.off(bucket))
    memory.setOff(bucket, item)
  }

  func hashRemove(_ item: Int) {
    var link = geometry.bucket(memory.u32(item + ItemField.hash))
    while true {
      let next = memory.off(link)
      if next == 0 { return }
      if next == item {
        memory.setOff(link, memory.off(item + ItemField.hashNext))
        return
      }
      link = next + ItemField.hashNext
    }
  }

  // MARK: LRU (one per class, like memcached's per-class LRUs)

  func lruPushHead(_ item: Int) {
    let entry = geometry.classEntry(classId(item))
    let head = memory.off(entry + ClassField.lruHead)
    memory.setOff(item + ItemField.lruPrev, 0)
    memory.setOff(item + ItemField.lruNext, head)
    if head != 0 { memory.setOff(head + ItemField.lruPrev, item) }
    memory.setOff(entry + ClassField.lruHead, item)
    if memory.off(entry + ClassField.lruTail) == 0 {
      memory.setOff(entry + ClassField.lruTail, item)
    }
  }

  func lruRemove(_ item: Int) {
    let entry = geometry.classEntry(classId(item))
    let prev = memory.off(item + ItemField.lruPrev)
    let next = memory.off(item + ItemField.lruNext)
    if prev != 0 {
      memory.setOff(prev + ItemField.lruNext, next)
    } else {
      memory.setOff(entry + ClassField.lruHead, next)
    }
    if next != 0 {
      memory.setOff(next + ItemField.lruPrev, prev)
    } else {
      memory.setOff(entry + ClassField.lruTail, prev)
    }
  }

  /// A hit: refresh the access time and move to the LRU head, at most once a
  /// minute per item (memcached's ITEM_UPDATE_INTERVAL).
  func bump(_ item: Int) {
    guard !frozen else { return }
    let time = memory.u32(item + ItemField.time)
    guard time &+ CacheLimits.lruBumpInterval < now else { return }
    memory.setU32(item + ItemField.time, now)
    lruRemove(item)
    lruPushHead(item)
  }

  // MARK: Link and unlink

  enum UnlinkReason { case removed, evicted, reclaimed }

  /// Makes a filled chunk a live item: hash index, LRU head, counters.
  func link(_ item: Int) {
    memory.setU8(item + ItemField.itemFlags, ItemField.linked)
    memory.setU32(item + ItemField.time, now)
    hashInsert(item)
    lruPushHead(item)
    let entry = geometry.classEntry(classId(item))
    memory.setU64(entry + ClassField.itemCount, memory.u64(entry + ClassField.itemCount) + 1)
    count(.currItems)
    count(.totalItems)
    count(.bytes, totalSize(item))
  }

  /// Removes a live item everywhere and returns its chunk to its free list.
  func unlink(_ item: Int, reason: UnlinkReason) {
    hashRemove(item)
    lruRemove(item)
    let entry = geometry.classEntry(classId(item))
    memory.setU64(entry + ClassField.itemCount, memory.u64(entry + ClassField.itemCount) - 1)
    count(.currItems, -1)
    count(.bytes, -totalSize(item))
    switch reason {
    case .removed: break
    case .evicted: count(.evictions)
    case .reclaimed: count(.reclaimed)
    }
    free(item)
  }

  // MARK: Slab allocator

  func free(_ chunk: Int) {
    let entry = geometry.classEntry(classId(chunk))
    memory.setU8(chunk + ItemField.itemFlags, 0)
    memory.setOff(chunk + ItemField.hashNext, memory.off(entry + ClassField.freeHead))
    memory.setOff(entry + ClassField.freeHead, chunk)
    memory.setU64(entry + ClassField.freeCount, memory.u64(entry + ClassField.freeCount) + 1)
  }

  func popFree(_ classId: Int) -> Int {
    let entry = geometry.classEntry(classId)
    let chunk = memory.off(entry + ClassField.freeHead)
    guard chunk != 0 else { return 0 }
    memory.setOff(entry + ClassField.freeHead, memory.off(chunk + ItemField.hashNext))
    memory.setU64(entry + ClassField.freeCount, memory.u64(entry + ClassField.freeCount) - 1)
    return chunk
  }

  /// Gives the next unused page to `classId`, cut into free chunks.
  func grabPage(_ classId: Int) -> Bool {
    let used = Int(memory.u64(Header.pagesUsed))
    guard used < geometry.pageCount else { return false }
    memory.setU64(Header.pagesUsed, UInt64(used + 1))
    memory.setU8(geometry.pageTableOffset + used, UInt8(classId))
    let entry = geometry.classEntry(classId)
    memory.setU64(entry + ClassField.pageCount, memory.u64(entry + ClassField.pageCount) + 1)
    let chunkSize = geometry.chunkSizes[classId - 1]
    let page = geometry.slabOffset + used * geometry.pageSize
    // Pushed in reverse so that allocation walks the page upwards.
    for index in stride(from: geometry.pageSize / chunkSize - 1, through: 0, by: -1) {
      let chunk = page + index * chunkSize
      memory.setU8(chunk + ItemField.classId, UInt8(classId))
      free(chunk)
    }
    return true
  }

  /// A chunk of `classId`: reclaim a dead LRU tail, else a free chunk, else a
  /// new page, else evict from the LRU tail (skipping pinned items). 0 if
  /// nothing could be found.
  func allocate(_ classId: Int) -> Int {
    let entry = geometry.classEntry(classId)
    let tail = memory.off(entry + ClassField.lruTail)
    if tail != 0 && !isPinned(tail) && isDead(tail) { unlink(tail, reason: .reclaimed) }
    var chunk = popFree(classId)
    if chunk == 0 && grabPage(classId) { chunk = popFree(classId) }
    if chunk == 0 { chunk = evict(classId) }
    return chunk
  }

  private func evict(_ classId: Int) -> Int {
    var candidate = memory.off(geometry.classEntry(classId) + ClassField.lruTail)
    var tries = 5
    while candidate != 0 && tries > 0 {
      if !isPinned(candidate) {
        unlink(candidate, reason: isDead(candidate) ? .reclaimed : .evicted)
        return popFree(classId)
      }
      candidate = memory.off(candidate + ItemField.lruPrev)
      tries -= 1
    }
    return 0
  }

  // MARK: Building items

  /// Allocates and fills an unlinked item: key, flags, expiry, value bytes
  /// from `fill` (which writes exactly `valueLength` bytes).
  func makeItem(
    key: UnsafeRawBufferPointer, hash: UInt32, flags: UInt32, exptime: UInt32, valueLength: Int,
    fill: (UnsafeMutableRawBufferPointer) -> Void
  ) throws(CacheOperationError) -> Int {
    let total = ItemField.headerSize + key.count + valueLength
    guard total <= geometry.itemSizeMax, let classId = geometry.classId(forTotal: total) else {
      count(.storeTooLarge)
      throw .tooLarge
    }
    let item = allocate(classId)
    guard item != 0 else {
      count(.storeNoMemory)
      throw .outOfMemory
    }
    memory.setOff(item + ItemField.hashNext, 0)
    memory.setU64(item + ItemField.cas, 0)
    memory.setU32(item + ItemField.exptime, exptime)
    memory.setU32(item + ItemField.time, now)
    memory.setU32(item + ItemField.flags, flags)
    memory.setU32(item + ItemField.valueLength, UInt32(valueLength))
    memory.setU32(item + ItemField.hash, hash)
    memory.setU8(item + ItemField.keyLength, UInt8(key.count))
    memory.setU8(item + ItemField.classId, UInt8(classId))
    memory.setU8(item + ItemField.itemFlags, 0)
    let keyStart = item + ItemField.headerSize
    memory.mutableBytes(keyStart, key.count).copyMemory(from: key)
    fill(memory.mutableBytes(keyStart + key.count, valueLength))
    return item
  }

  /// Puts `item` in place of `old` (0 if none), with a fresh CAS.
  func replace(_ old: Int, with item: Int) {
    if old != 0 { unlink(old, reason: .removed) }
    memory.setU64(item + ItemField.cas, nextCas())
    link(item)
  }
}

@inline(__always) func keysEqual(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
  guard a.count == b.count else { return false }
  guard let pa = a.baseAddress, let pb = b.baseAddress else { return true }
  return memcmp(pa, pb, a.count) == 0
}

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif
