extension CacheStore {
  /// The invariants of the mutable header words, all of them, in
  /// O(classes + pages): the state word, the page counts against the page
  /// table (the root of every later chunk check), every class's anchors
  /// (free list head, LRU head and tail: a chunk of that class in a used
  /// page, LRU ends either both set or both 0, counts within the class's
  /// chunks), the clock (`checkClock`) and the CAS counter (`checkCas`).
  /// The items themselves are not looked at here: each is checked when it
  /// is reached (Trust.swift). A header word that fails refuses the whole
  /// region: the caller starts cold.
  static func checkDynamicState(
    _ memory: RegionMemory, _ geometry: Geometry, requireFrozen: Bool, wallSeconds: Int64
  ) throws(CacheRegionError) {
    let state = memory.u32(Header.state)
    guard state == Header.stateLive || state == Header.stateFrozen else {
      throw .corrupt("state word \(state)")
    }
    if requireFrozen && state != Header.stateFrozen { throw .notFrozen }
    let pagesUsed = memory.u64(Header.pagesUsed)
    guard pagesUsed <= UInt64(geometry.pageCount) else { throw .corrupt("pages used \(pagesUsed)") }
    let pagesOfClasses = try checkPageTable(memory, geometry, pagesUsed: Int(pagesUsed))
    for classId in 1...geometry.classCount {
      try checkClass(
        classId, memory, geometry, pagesUsed: Int(pagesUsed), pages: pagesOfClasses[classId])
    }
    try checkClock(memory, wallSeconds: wallSeconds)
    try checkCas(memory, geometry, pagesUsed: Int(pagesUsed))
  }

  /// Every used page belongs to a class, every unused one to none, and each
  /// class's page count is the number of pages the table gives it. Returns those numbers by class id.
  static func checkPageTable(_ memory: RegionMemory, _ geometry: Geometry, pagesUsed: Int)
    throws(CacheRegionError) -> [UInt64]
  {
    var pages = [UInt64](repeating: 0, count: geometry.classCount + 1)
    for page in 0..<pagesUsed {
      let classId = Int(memory.u8(geometry.pageTableOffset + page))
      guard classId >= 1 && classId <= geometry.classCount else {
        throw .corrupt("page \(page) of class \(classId)")
      }
      pages[classId] += 1
    }
    // Pages not handed out yet belong to no class (chunkClass relies on it).
    for page in pagesUsed..<geometry.pageCount
    where memory.u8(geometry.pageTableOffset + page) != 0 {
      throw .corrupt("unused page \(page) of class \(memory.u8(geometry.pageTableOffset + page))")
    }
    for classId in 1...geometry.classCount {
      let recorded = memory.u64(geometry.classEntry(classId) + ClassField.pageCount)
      guard recorded == pages[classId] else {
        throw .corrupt("class \(classId) has \(recorded) pages, the page table \(pages[classId])")
      }
    }
    return pages
  }

  private static func checkClass(
    _ classId: Int, _ memory: RegionMemory, _ geometry: Geometry, pagesUsed: Int, pages: UInt64
  ) throws(CacheRegionError) {
    let entry = geometry.classEntry(classId)
    for (field, name) in [
      (ClassField.freeHead, "free list"), (ClassField.lruHead, "LRU head"),
      (ClassField.lruTail, "LRU tail"),
    ] {
      let chunk = memory.off(entry + field)
      guard chunk == 0 || isChunk(chunk, of: classId, memory, geometry, pagesUsed: pagesUsed)
      else {
        throw .corrupt("class \(classId) \(name) at \(chunk)")
      }
    }
    let head = memory.off(entry + ClassField.lruHead)
    let tail = memory.off(entry + ClassField.lruTail)
    guard (head == 0) == (tail == 0) else { throw .corrupt("class \(classId) LRU ends") }
    // Counts are bookkeeping only (no walk trusts them), but a count beyond
    // the class's chunks can only be damage.
    let chunks = pages * UInt64(geometry.pageSize / geometry.chunkSizes[classId - 1])
    let items = memory.u64(entry + ClassField.itemCount)
    let free = memory.u64(entry + ClassField.freeCount)
    guard items <= chunks && free <= chunks - items else {
      throw .corrupt("class \(classId): \(items) items and \(free) free in \(chunks) chunks")
    }
  }

  /// The cache clock (seconds) must be one a store can have written:
  /// - at least `clockStart`, and below 2^32 (items keep it in 32 bits);
  /// - when the nanoseconds were recorded by `freeze`, they are written
  ///   together with the seconds and can only be ahead by the one second
  ///   boundary crossed in between (behind is fine: an unfrozen store's
  ///   seconds move on alone, and `attach` then resumes from the seconds);
  /// - when `format` recorded the wall-clock second at which the cache clock
  ///   was 0, the cache clock cannot be ahead of the wall-clock time since
  ///   (it runs on CLOCK_MONOTONIC, and only while an image runs), give or
  ///   take a day and 1% for clock adjustments.
  /// A clock from the future would make every item with a TTL dead at once;
  /// one from the past cannot be told from a long-idle cache, and is kept.
  static func checkClock(_ memory: RegionMemory, wallSeconds: Int64) throws(CacheRegionError) {
    let clock = memory.u64(Header.clock)
    guard clock >= CacheLimits.clockStart && clock <= UInt64(UInt32.max) else {
      throw .corrupt("cache clock \(clock)")
    }
    let nanoseconds = memory.u64(Header.clockNanoseconds)
    guard nanoseconds == 0 || nanoseconds / 1_000_000_000 <= clock + 1 else {
      throw .corrupt("cache clock \(clock) s but \(nanoseconds) ns")
    }
    let epoch = Int64(bitPattern: memory.u64(Header.clockEpochWallSeconds))
    guard epoch != 0 else { return }
    let (elapsed, overflow) = wallSeconds.subtractingReportingOverflow(epoch)
    let slack: Int64 = 86_400 + max(0, elapsed / 100)
    guard !overflow && Int64(clock) <= elapsed &+ slack else {
      throw .corrupt("cache clock \(clock) s is ahead of the \(elapsed) s since it started")
    }
  }

  /// The CAS counter hands out every CAS: it must be ahead of the CAS of
  /// every item, which is checked on the items attach can reach cheaply
  /// (each class's LRU head and tail, the newest and oldest), and of the
  /// flush horizon's CAS; and below 2^62 (a billion sets a second for a
  /// century is 2^62), so that it cannot wrap. A counter that fails would
  /// hand out CAS values items already have: a client's `cas` could then
  /// overwrite a value it never saw.
  static func checkCas(_ memory: RegionMemory, _ geometry: Geometry, pagesUsed: Int)
    throws(CacheRegionError)
  {
    let counter = memory.u64(Header.casCounter)
    guard counter < 1 << 62 else { throw .corrupt("CAS counter \(counter)") }
    guard memory.u64(Header.oldestCas) <= counter else {
      throw .corrupt("flush CAS \(memory.u64(Header.oldestCas)) after the CAS counter \(counter)")
    }
    guard memory.u64(Header.oldestLive) <= UInt64(UInt32.max) else {
      throw .corrupt("flush horizon \(memory.u64(Header.oldestLive))")
    }
    for classId in 1...geometry.classCount {
      for field in [ClassField.lruHead, ClassField.lruTail] {
        // Anchors were checked to be chunks of the class: their CAS is in bounds.
        let item = memory.off(geometry.classEntry(classId) + field)
        guard item != 0 && memory.u8(item + ItemField.itemFlags) & ItemField.linked != 0 else {
          continue
        }
        let cas = memory.u64(item + ItemField.cas)
        guard cas <= counter else {
          throw .corrupt("item CAS \(cas) after the CAS counter \(counter)")
        }
      }
    }
  }

  /// Whether `offset` is the start of a chunk of `classId`.
  static func isChunk(
    _ offset: Int, of classId: Int, _ memory: RegionMemory, _ geometry: Geometry, pagesUsed: Int
  )
    -> Bool
  {
    guard offset >= geometry.slabOffset && offset < geometry.slabEnd else { return false }
    let page = (offset - geometry.slabOffset) / geometry.pageSize
    guard page < pagesUsed && Int(memory.u8(geometry.pageTableOffset + page)) == classId else {
      return false
    }
    let chunkSize = geometry.chunkSizes[classId - 1]
    let inPage = offset - geometry.slabOffset - page * geometry.pageSize
    return inPage % chunkSize == 0 && inPage / chunkSize < geometry.pageSize / chunkSize
  }

  /// Walks every item, free chunk, LRU and hash chain and checks they agree
  /// (O(items): for tests and debugging, never at start-up).
  /// - Throws: `CacheRegionError.corrupt` naming the first disagreement.
  public func checkConsistency() throws(CacheRegionError) {
    try locked { core throws(CacheRegionError) in try core.checkConsistency() }
  }
}

extension StoreCore {
  func checkConsistency() throws(CacheRegionError) {
    let pagesUsed = Int(memory.u64(Header.pagesUsed))
    var lruItems = 0
    var bytes: UInt64 = 0
    for classId in 1...geometry.classCount {
      let entry = geometry.classEntry(classId)
      var item = memory.off(entry + ClassField.lruHead)
      var prev = 0
      var count: UInt64 = 0
      var cycle = CycleGuard()
      while item != 0 {
        guard CacheStore.isChunk(item, of: classId, memory, geometry, pagesUsed: pagesUsed) else {
          throw .corrupt("LRU of class \(classId) reaches \(item)")
        }
        guard !cycle.hasLooped(item) else { throw .corrupt("LRU of class \(classId) loops") }
        guard itemClass(item) == classId else { throw .corrupt("item at \(item)") }
        guard memory.off(item + ItemField.lruPrev) == prev else {
          throw .corrupt("LRU back link at \(item)")
        }
        guard memory.u8(item + ItemField.itemFlags) == ItemField.linked else {
          throw .corrupt("item flags at \(item)")
        }
        guard hashContains(item) else { throw .corrupt("item \(item) not in the hash index") }
        count += 1
        bytes += UInt64(totalSize(item))
        prev = item
        item = memory.off(item + ItemField.lruNext)
      }
      guard memory.off(entry + ClassField.lruTail) == prev else {
        throw .corrupt("LRU tail of class \(classId)")
      }
      guard memory.u64(entry + ClassField.itemCount) == count else {
        throw .corrupt("item count of class \(classId)")
      }
      let free = try freeChunks(classId, pagesUsed: pagesUsed)
      let capacity =
        memory.u64(entry + ClassField.pageCount)
        * UInt64(geometry.pageSize / geometry.chunkSizes[classId - 1])
      guard free + count == capacity else {
        throw .corrupt("class \(classId): \(free) free + \(count) items != \(capacity)")
      }
      lruItems += Int(count)
    }
    _ = try CacheStore.checkPageTable(memory, geometry, pagesUsed: pagesUsed)
    guard try hashItemCount() == lruItems else { throw .corrupt("hash index and LRUs disagree") }
    guard stat(.currItems) == UInt64(lruItems) else { throw .corrupt("curr_items") }
    guard stat(.bytes) == bytes else { throw .corrupt("bytes") }
  }

  private func freeChunks(_ classId: Int, pagesUsed: Int) throws(CacheRegionError) -> UInt64 {
    var chunk = memory.off(geometry.classEntry(classId) + ClassField.freeHead)
    var free: UInt64 = 0
    var cycle = CycleGuard()
    while chunk != 0 {
      guard CacheStore.isChunk(chunk, of: classId, memory, geometry, pagesUsed: pagesUsed),
        memory.u8(chunk + ItemField.itemFlags) == 0
      else {
        throw .corrupt("free list of class \(classId) reaches \(chunk)")
      }
      guard !cycle.hasLooped(chunk) else { throw .corrupt("free list of class \(classId) loops") }
      free += 1
      chunk = memory.off(chunk + ItemField.hashNext)
    }
    guard free == memory.u64(geometry.classEntry(classId) + ClassField.freeCount) else {
      throw .corrupt("free count of class \(classId)")
    }
    return free
  }

  private func hashContains(_ item: Int) -> Bool {
    let bucket = geometry.bucket(memory.u32(item + ItemField.hash))
    var next = memory.off(bucket)
    var cycle = CycleGuard()
    while next != 0 && itemClass(next) != 0 && !cycle.hasLooped(next) {
      if next == item { return true }
      next = memory.off(next + ItemField.hashNext)
    }
    return false
  }

  private func hashItemCount() throws(CacheRegionError) -> Int {
    var total = 0
    for index in 0..<geometry.bucketCount {
      let bucket = geometry.hashOffset + index * 8
      var item = memory.off(bucket)
      var cycle = CycleGuard()
      while item != 0 {
        guard itemClass(item) != 0, geometry.bucket(memory.u32(item + ItemField.hash)) == bucket
        else { throw .corrupt("hash chain of bucket \(bucket) reaches \(item)") }
        guard !cycle.hasLooped(item) else { throw .corrupt("hash chain of bucket \(bucket) loops") }
        total += 1
        item = memory.off(item + ItemField.hashNext)
      }
    }
    return total
  }
}
