extension CacheStore {
  /// The cheap invariants of the mutable header part: the page counts, the
  /// clock and CAS counter, and every class's anchors (free list head, LRU
  /// head and tail) pointing at a chunk of that class in a used page.
  static func checkDynamicState(
    _ memory: RegionMemory, _ geometry: Geometry, requireFrozen: Bool
  ) throws(CacheRegionError) {
    let state = memory.u32(Header.state)
    guard state == Header.stateLive || state == Header.stateFrozen else {
      throw .corrupt("state word \(state)")
    }
    if requireFrozen && state != Header.stateFrozen { throw .notFrozen }
    let pagesUsed = memory.u64(Header.pagesUsed)
    guard pagesUsed <= UInt64(geometry.pageCount) else { throw .corrupt("pages used \(pagesUsed)") }
    guard memory.u64(Header.clock) >= CacheLimits.clockStart else { throw .corrupt("cache clock") }
    var pagesOfClasses: UInt64 = 0
    for classId in 1...geometry.classCount {
      let entry = geometry.classEntry(classId)
      pagesOfClasses += memory.u64(entry + ClassField.pageCount)
      for (field, name) in [
        (ClassField.freeHead, "free list"), (ClassField.lruHead, "LRU head"),
        (ClassField.lruTail, "LRU tail"),
      ] {
        let chunk = memory.off(entry + field)
        guard chunk == 0 || isChunk(chunk, of: classId, memory, geometry, pagesUsed: Int(pagesUsed))
        else {
          throw .corrupt("class \(classId) \(name) at \(chunk)")
        }
      }
      let head = memory.off(entry + ClassField.lruHead)
      let tail = memory.off(entry + ClassField.lruTail)
      guard (head == 0) == (tail == 0) else { throw .corrupt("class \(classId) LRU ends") }
    }
    guard pagesOfClasses == pagesUsed else {
      throw .corrupt("class pages \(pagesOfClasses) vs used \(pagesUsed)")
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
      while item != 0 {
        guard CacheStore.isChunk(item, of: classId, memory, geometry, pagesUsed: pagesUsed) else {
          throw .corrupt("LRU of class \(classId) reaches \(item)")
        }
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
    guard hashItemCount() == lruItems else { throw .corrupt("hash index and LRUs disagree") }
    guard stat(.currItems) == UInt64(lruItems) else { throw .corrupt("curr_items") }
    guard stat(.bytes) == bytes else { throw .corrupt("bytes") }
  }

  private func freeChunks(_ classId: Int, pagesUsed: Int) throws(CacheRegionError) -> UInt64 {
    var chunk = memory.off(geometry.classEntry(classId) + ClassField.freeHead)
    var free: UInt64 = 0
    while chunk != 0 {
      guard CacheStore.isChunk(chunk, of: classId, memory, geometry, pagesUsed: pagesUsed) else {
        throw .corrupt("free list of class \(classId) reaches \(chunk)")
      }
      free += 1
      chunk = memory.off(chunk + ItemField.hashNext)
    }
    guard free == memory.u64(geometry.classEntry(classId) + ClassField.freeCount) else {
      throw .corrupt("free count of class \(classId)")
    }
    return free
  }

  private func hashContains(_ item: Int) -> Bool {
    var next = memory.off(geometry.bucket(memory.u32(item + ItemField.hash)))
    while next != 0 {
      if next == item { return true }
      next = memory.off(next + ItemField.hashNext)
    }
    return false
  }

  private func hashItemCount() -> Int {
    var total = 0
    for bucket in 0..<geometry.bucketCount {
      var item = memory.off(geometry.hashOffset + bucket * 8)
      while item != 0 {
        total += 1
        item = memory.off(item + ItemField.hashNext)
      }
    }
    return total
  }
}
