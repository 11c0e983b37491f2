import CKHOChecksum

/// The unlocked core: hash index, per-class LRUs, slab allocator, counters,
/// all in the region. Every method is called with the store lock held.
///
/// Trust: the geometry (checked against `Geometry.plan` at attach) and the
/// header words `checkDynamicState` checked are trusted; nothing else read
/// from the region is. Every offset read from an item, a bucket or a list
/// is checked (`chunkClass`, `itemClass`) before it is followed or written
/// through, every length before it is used, and every walk is bounded. What
/// fails a check is cut away and reported (`damage`), never followed.
final class StoreCore {
  let memory: RegionMemory
  let geometry: Geometry
  let clock: CacheClock
  /// The geometry, precomputed for `chunkClass`.
  let chunkTable: ChunkTable
  /// Told about every piece of damage found, with the store lock held.
  let damageHandler: (@Sendable (String) -> Void)?
  /// For crash tests: called at named points in the middle of a mutation
  /// (`CacheStore.crashPoints`), where a process may be killed to leave
  /// the region as a crash there would. nil outside such tests.
  var crashHook: (@Sendable (String) -> Void)?
  /// Mirrors the header's state word; checked by every mutation.
  var frozen = false
  /// The cache clock of the operation in progress (set by `tick`).
  var now: UInt32 = 0
  /// The item the operation in progress is still reading (a store's old
  /// item, incr's item), 0 if none: allocation must neither evict it nor
  /// move its page. Kept here rather than in the region, so that a damaged
  /// region cannot pin items forever.
  var pinned = 0
  /// The item `makeItem` filled and `link` has not linked yet, 0 if none.
  var building = 0
  /// Evictions per class since the last look at other classes' pages
  /// (see `allocate`), so that a full cache does not compare every class
  /// on every store.
  var evictionsSinceRebalance: [Int]

  init(
    memory: RegionMemory, geometry: Geometry, clock: CacheClock,
    damageHandler: (@Sendable (String) -> Void)? = nil
  ) {
    self.memory = memory
    self.geometry = geometry
    self.chunkTable = ChunkTable(geometry)
    self.clock = clock
    self.damageHandler = damageHandler
    self.evictionsSinceRebalance = Array(repeating: 0, count: geometry.classCount + 1)
  }

  deinit { chunkTable.deallocate() }

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

  /// Counts and reports damage that was just cut away.
  func damage(_ what: String) {
    count(.damaged)
    damageHandler?(what)
  }

  // MARK: Item fields (of items `itemClass` accepted, or just built)

  /// CRC-32C of what a reader of the item trusts: flags and value length,
  /// key length, key and value. The lengths must have been checked
  /// (`itemClass`): the bytes summed lie inside the item's chunk.
  @inline(__always) func contentChecksum(_ item: Int) -> UInt32 {
    let base = memory.base + item
    var crc = ckho_crc32c(0, base + ItemField.flags, 8)
    crc = ckho_crc32c(crc, base + ItemField.keyLength, 1)
    return ckho_crc32c(crc, base + ItemField.headerSize, keyLength(item) + valueLength(item))
  }

  /// Records the item's checksum, after its bytes are written.
  @inline(__always) func seal(_ item: Int) {
    memory.setU32(item + ItemField.checksum, contentChecksum(item))
  }

  /// Whether the item's bytes are the ones it was sealed with.
  @inline(__always) func isIntact(_ item: Int) -> Bool {
    memory.u32(item + ItemField.checksum) == contentChecksum(item)
  }

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
  @inline(__always) func isLinked(_ chunk: Int) -> Bool {
    memory.u8(chunk + ItemField.itemFlags) & ~ItemField.pinned == ItemField.linked
  }
  @inline(__always) func isPinned(_ item: Int) -> Bool { item == pinned }

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
  /// `countDead` is set. A damaged chain is cut where it goes wrong.
  ///
  /// With `verify` (the default), an item whose checksum does not match
  /// its bytes is damaged: it is dropped and reported, never returned. A
  /// caller about to replace the item whatever it holds may skip that.
  func find(
    _ key: UnsafeRawBufferPointer, hash: UInt32, countDead: Bool = false, verify: Bool = true
  ) -> Int {
    let bucket = geometry.bucket(hash)
    var link = bucket
    var cycle = CycleGuard()
    while true {
      let item = chainItem(at: link, bucket: bucket)
      if item == 0 { return 0 }
      if cycle.hasLooped(item) {
        cutChain(link, bucket: bucket, at: item, loops: true)
        return 0
      }
      if memory.u32(item + ItemField.hash) == hash && keyLength(item) == key.count
        && keysEqual(self.key(item), key)
      {
        if verify && !isIntact(item) {
          torn(item)
          return 0
        }
        guard isDead(item) else { return item }
        if countDead { count(isExpired(item) ? .getExpired : .getFlushed) }
        if !frozen { unlink(item, reason: .reclaimed) }
        return 0
      }
      link = item + ItemField.hashNext
    }
  }

  /// The item the link at `link` (a bucket head or an item's `hashNext`)
  /// names, or 0 at the end of the chain. A link to anything but a sound
  /// item ends the chain: it is cut there and reported. (An item of another
  /// bucket is not refused here: reading it is safe, it cannot match the
  /// key asked for, and if it is freed the chain is cut at it then.
  /// `checkConsistency` looks for it.)
  @inline(__always) func chainItem(at link: Int, bucket: Int) -> Int {
    let item = memory.off(link)
    guard item != 0 else { return 0 }
    if itemClass(item) != 0 { return item }
    cutChain(link, bucket: bucket, at: item, loops: false)
    return 0
  }

  // The damage paths, out of line: they build a message, and keeping that
  // out of the hot functions keeps those small.

  @inline(never) func torn(_ item: Int) {
    damage("item at \(item): its bytes do not match its checksum")
    if !frozen { unlink(item, reason: .reclaimed) }
  }

  @inline(never) func cutChain(_ link: Int, bucket: Int, at item: Int, loops: Bool) {
    cut(link, "hash chain of bucket \(bucket) \(loops ? "loops at" : "reaches") \(item)")
  }

  @inline(never) func lruDamage(_ classId: Int, at offset: Int, excluding item: Int) {
    damage("LRU of class \(classId) broken at \(offset)")
    rebuildClass(classId, excluding: item)
  }

  @inline(never) func freeListDamage(_ classId: Int, at chunk: Int) {
    damage("free list of class \(classId) reaches \(chunk)")
    rebuildClass(classId, excluding: 0)
  }

  /// Ends a damaged chain or list at `link` (not while frozen: the region
  /// is then read-only; the walk just stops) and reports it.
  func cut(_ link: Int, _ what: String) {
    if !frozen { memory.setOff(link, 0) }
    damage(what)
  }

  func hashInsert(_ item: Int) {
    let bucket = geometry.bucket(memory.u32(item + ItemField.hash))
    // The old head is copied, not followed: it is checked when walked.
    memory.setOff(item + ItemField.hashNext, memory.off(bucket))
    memory.setOff(bucket, item)
  }

  func hashRemove(_ item: Int) {
    let bucket = geometry.bucket(memory.u32(item + ItemField.hash))
    var link = bucket
    var cycle = CycleGuard()
    while true {
      let next = chainItem(at: link, bucket: bucket)
      if next == 0 { return }
      if cycle.hasLooped(next) {
        cutChain(link, bucket: bucket, at: next, loops: true)
        return
      }
      if next == item {
        memory.setOff(link, memory.off(item + ItemField.hashNext))
        return
      }
      link = next + ItemField.hashNext
    }
  }

  // MARK: LRU (one per class, like memcached's per-class LRUs)

  /// Whether `offset` may be written through as an LRU neighbour in class
  /// `classId`: 0 (none), or a chunk of that class. That is all the safety
  /// a write of an LRU link needs: it lands in a link field of a chunk of
  /// this class, which nothing trusts without a check, so the worst a
  /// damaged neighbour can do is tangle this class's LRU, never touch a
  /// key, a value or anything outside the slab pages. Whether the
  /// neighbour points back is not asked here: that would read two cold
  /// cache lines on every unlink (it halved SET throughput); `evict`
  /// checks the links it walks instead, and rebuilds a tangled LRU.
  @inline(__always) func isLRUNeighbour(_ offset: Int, _ classId: Int) -> Bool {
    offset == 0 || chunkClass(offset) == classId
  }

  /// Puts `item` (of class `classId`) at the head of its LRU.
  ///
  /// The class's LRU anchors (head and tail) need no check here: `attach`
  /// checked each is 0 or a chunk of the class, and they are only ever set
  /// to offsets that passed `chunkClass` since (or rebuilt, also when their
  /// page moves), so writing through them is safe. (The free list head is
  /// not such an anchor: popping copies a raw link into it; `popFree`
  /// checks it.)
  func lruPushHead(_ item: Int, _ classId: Int) {
    let entry = geometry.classEntry(classId)
    var head = memory.off(entry + ClassField.lruHead)
    if head == item {
      lruDamage(classId, at: head, excluding: item)
      head = memory.off(entry + ClassField.lruHead)
    }
    memory.setOff(item + ItemField.lruPrev, 0)
    memory.setOff(item + ItemField.lruNext, head)
    if head != 0 { memory.setOff(head + ItemField.lruPrev, item) }
    memory.setOff(entry + ClassField.lruHead, item)
    if memory.off(entry + ClassField.lruTail) == 0 {
      memory.setOff(entry + ClassField.lruTail, item)
    }
    memory.setU64(entry + ClassField.itemCount, memory.u64(entry + ClassField.itemCount) &+ 1)
  }

  /// Takes `item` (of class `classId`) out of its LRU. Neighbours must be
  /// chunks of the class (`isLRUNeighbour`), an end must be the class's
  /// anchor; otherwise the class's lists are rebuilt from its pages
  /// without `item`.
  func lruRemove(_ item: Int, _ classId: Int) {
    let entry = geometry.classEntry(classId)
    let prev = memory.off(item + ItemField.lruPrev)
    let next = memory.off(item + ItemField.lruNext)
    let prevSound =
      prev == 0 ? memory.off(entry + ClassField.lruHead) == item : isLRUNeighbour(prev, classId)
    let nextSound =
      next == 0 ? memory.off(entry + ClassField.lruTail) == item : isLRUNeighbour(next, classId)
    guard prevSound && nextSound && prev != item && next != item else {
      lruDamage(classId, at: item, excluding: item)
      return
    }
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
    memory.setU64(entry + ClassField.itemCount, memory.u64(entry + ClassField.itemCount) &- 1)
  }

  /// A hit: refresh the access time and move to the LRU head, at most once a
  /// minute per item (memcached's ITEM_UPDATE_INTERVAL).
  func bump(_ item: Int) {
    guard !frozen else { return }
    let time = memory.u32(item + ItemField.time)
    guard time &+ CacheLimits.lruBumpInterval < now else { return }
    memory.setU32(item + ItemField.time, now)
    let classId = self.classId(item)
    lruRemove(item, classId)
    lruPushHead(item, classId)
  }

  // MARK: Link and unlink

  enum UnlinkReason { case removed, evicted, reclaimed }

  /// Makes a filled chunk a live item: hash index, LRU head, counters.
  func link(_ item: Int) {
    building = 0
    memory.setU8(item + ItemField.itemFlags, ItemField.linked)
    memory.setU32(item + ItemField.time, now)
    hashInsert(item)
    lruPushHead(item, classId(item))
    count(.currItems)
    count(.totalItems)
    count(.bytes, totalSize(item))
  }

  /// Removes a live item everywhere and returns its chunk to its free list.
  func unlink(_ item: Int, reason: UnlinkReason) {
    free(item, detach(item, reason: reason))
  }

  /// Removes a live item from the hash index and its LRU, counts it, and
  /// marks its chunk unused; the caller owns the chunk. `item` must have
  /// passed `itemClass` in this operation (every caller has: it came from
  /// `find`, or a walk that checked it), so its class byte is trusted.
  /// Returns its class.
  func detach(_ item: Int, reason: UnlinkReason) -> Int {
    let classId = self.classId(item)
    hashRemove(item)
    // Out of its chain, still in its LRU and counted.
    if reason == .evicted { crashHook?(CacheStore.CrashPoint.midEviction) }
    lruRemove(item, classId)
    memory.setU8(item + ItemField.itemFlags, 0)
    count(.currItems, -1)
    count(.bytes, -totalSize(item))
    switch reason {
    case .removed: break
    case .evicted:
      count(.evictions)
      countClassEviction(item, classId)
    case .reclaimed:
      count(.reclaimed)
      countClassReclaim(item, classId)
    }
    return classId
  }

  // MARK: Slab allocator

  /// Pushes `chunk` (of class `classId`) on its class's free list.
  func free(_ chunk: Int, _ classId: Int) {
    let entry = geometry.classEntry(classId)
    memory.setU8(chunk + ItemField.classId, UInt8(classId))
    memory.setU8(chunk + ItemField.itemFlags, 0)
    memory.setOff(chunk + ItemField.hashNext, memory.off(entry + ClassField.freeHead))
    memory.setOff(entry + ClassField.freeHead, chunk)
    memory.setU64(entry + ClassField.freeCount, memory.u64(entry + ClassField.freeCount) &+ 1)
  }

  /// A free chunk of `classId`, or 0. A free list that leads anywhere but
  /// to an unused chunk of that class is rebuilt from the class's pages.
  func popFree(_ classId: Int) -> Int {
    let entry = geometry.classEntry(classId)
    for _ in 0..<2 {
      let chunk = memory.off(entry + ClassField.freeHead)
      guard chunk != 0 else { return 0 }
      if chunkClass(chunk) == classId && memory.u8(chunk + ItemField.itemFlags) == 0 {
        // The next link is copied, not followed: it is checked when popped.
        memory.setOff(entry + ClassField.freeHead, memory.off(chunk + ItemField.hashNext))
        memory.setU64(entry + ClassField.freeCount, memory.u64(entry + ClassField.freeCount) &- 1)
        return chunk
      }
      freeListDamage(classId, at: chunk)
    }
    return 0
  }

  /// Gives the next unused page to `classId`, cut into free chunks.
  func grabPage(_ classId: Int) -> Bool {
    let used = pagesUsed
    guard used < geometry.pageCount else { return false }
    memory.setU64(Header.pagesUsed, UInt64(used + 1))
    memory.setU8(geometry.pageTableOffset + used, UInt8(classId))
    let entry = geometry.classEntry(classId)
    memory.setU64(entry + ClassField.pageCount, memory.u64(entry + ClassField.pageCount) &+ 1)
    carve(used, classId)
    return true
  }

  /// Cuts page `page` into free chunks of `classId`.
  func carve(_ page: Int, _ classId: Int) {
    let chunkSize = geometry.chunkSizes[classId - 1]
    let start = geometry.pageStart(page)
    // Pushed in reverse so that allocation walks the page upwards.
    for index in stride(from: geometry.pageSize / chunkSize - 1, through: 0, by: -1) {
      free(start + index * chunkSize, classId)
    }
  }

  /// A chunk of `classId`: reclaim a dead LRU tail, else a free chunk, else a
  /// new page, else a page of another class whose data is older (see
  /// `rebalance`), else evict from the LRU tail (skipping the pinned item),
  /// else any other class's page. 0 if nothing could be found.
  func allocate(_ classId: Int) -> Int {
    reclaimDeadTail(classId)
    var chunk = popFree(classId)
    if chunk == 0 && grabPage(classId) { chunk = popFree(classId) }
    if chunk == 0 && rebalanceIsDue(classId) && rebalance(to: classId, force: false) {
      chunk = popFree(classId)
    }
    if chunk == 0 { chunk = evict(classId) }
    if chunk == 0 && rebalance(to: classId, force: true) { chunk = popFree(classId) }
    return chunk
  }

  private func reclaimDeadTail(_ classId: Int) {
    let tail = memory.off(geometry.classEntry(classId) + ClassField.lruTail)
    // The tail is an anchor (always a chunk of the class, see lruPushHead):
    // its fields can be read; it is checked as an item only when it looks dead.
    if tail != 0 && !isPinned(tail) && isDead(tail) && itemClass(tail) == classId {
      unlink(tail, reason: .reclaimed)
    }
  }

  /// Whether to compare this class's LRU age with the others' before
  /// evicting: always when it has no page, else once every
  /// `min(64, chunks per page)` evictions (every time for the page-sized
  /// class, whose every eviction frees a whole page).
  private func rebalanceIsDue(_ classId: Int) -> Bool {
    let entry = geometry.classEntry(classId)
    guard memory.u64(entry + ClassField.pageCount) != 0 else { return true }
    let interval = min(64, geometry.pageSize / geometry.chunkSizes[classId - 1])
    evictionsSinceRebalance[classId] += 1
    guard evictionsSinceRebalance[classId] >= interval else { return false }
    evictionsSinceRebalance[classId] = 0
    return true
  }

  /// Evicts (or reclaims) the least recently used unpinned item among the
  /// last five of the LRU and returns its chunk; 0 if none. The walk from
  /// the tail checks each back link before following it.
  private func evict(_ classId: Int) -> Int {
    for _ in 0..<2 {
      var candidate = memory.off(geometry.classEntry(classId) + ClassField.lruTail)
      var next = 0
      var tries = 5
      var broken = false
      while candidate != 0 && tries > 0 {
        guard itemClass(candidate) == classId,
          memory.off(candidate + ItemField.lruNext) == next
        else {
          broken = true
          break
        }
        if !isPinned(candidate) {
          unlink(candidate, reason: isDead(candidate) ? .reclaimed : .evicted)
          return popFree(classId)
        }
        next = candidate
        candidate = memory.off(candidate + ItemField.lruPrev)
        tries -= 1
      }
      guard broken else { return 0 }
      lruDamage(classId, at: candidate, excluding: 0)
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
    memory.setU8(item + ItemField.metaFlags, 0)
    // Unlinked, it looks like a free chunk: keep a rebuild from taking it.
    building = item
    let keyStart = item + ItemField.headerSize
    memory.mutableBytes(keyStart, key.count).copyMemory(from: key)
    fill(memory.mutableBytes(keyStart + key.count, valueLength))
    seal(item)
    return item
  }

  /// Puts `item` in place of `old` (0 if none), with a fresh CAS.
  func replace(_ old: Int, with item: Int) {
    if old != 0 { unlink(old, reason: .removed) }
    // Between the old item's unlink and the new one's link: the key has
    // no value at all for a moment.
    crashHook?(CacheStore.CrashPoint.midSet)
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
