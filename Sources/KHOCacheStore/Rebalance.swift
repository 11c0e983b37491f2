// Moving slab pages between size classes (memcached's slab automover, done
// synchronously by the allocation that needs the page).
//
// Without it a page, once cut into chunks of one class, serves that class
// forever: a cache filled with small items cannot store a large one. Here a
// class that needs memory takes a whole page from another class when it
// has none of its own, when its own LRU cannot give a chunk, or when the
// other class's least recently used item is older than its own (the one
// global LRU order the per-class LRUs approximate: evict the oldest data).

extension StoreCore {
  /// Gives `classId` a page taken from another class (see `pickVictim`).
  /// Unless `force`d, only when `classId` has no page yet or the victim's
  /// LRU tail is older than its own.
  /// - Returns: whether a page moved.
  func rebalance(to classId: Int, force: Bool) -> Bool {
    guard let (victim, page) = pickVictim(for: classId) else { return false }
    if !force && memory.u64(geometry.classEntry(classId) + ClassField.pageCount) != 0 {
      // An empty own LRU counts as the newest data: nothing of ours to evict.
      let own = tailTime(classId) ?? UInt32.max
      guard (tailTime(victim) ?? 0) < own else { return false }
    }
    movePage(page, from: victim, to: classId)
    return true
  }

  /// The class to take a page from, and the page: among the other classes
  /// with a page that can move, the one whose least recently used item is
  /// oldest (a class with no items at all first: its pages are all free),
  /// the one with most pages on a tie. Oldest-tail rather than most-pages,
  /// because it is the choice that evicts the data least likely to be read
  /// again, which is what the LRU would have done with one list.
  func pickVictim(for classId: Int) -> (Int, Int)? {
    var best: (victim: Int, page: Int, time: UInt32, pages: UInt64)?
    for victim in 1...geometry.classCount where victim != classId {
      let pages = memory.u64(geometry.classEntry(victim) + ClassField.pageCount)
      guard pages != 0 else { continue }
      let time = tailTime(victim) ?? 0
      if let best, (best.time, UInt64.max - best.pages) <= (time, UInt64.max - pages) { continue }
      guard let page = pageToTake(from: victim) else { continue }
      best = (victim, page, time, pages)
    }
    return best.map { ($0.victim, $0.page) }
  }

  /// The access time of the least recently used item of `classId`; nil
  /// when its LRU is empty. A tail that is no sound item reads as 0 (the
  /// oldest), so that a damaged class gives its pages first.
  func tailTime(_ classId: Int) -> UInt32? {
    let tail = memory.off(geometry.classEntry(classId) + ClassField.lruTail)
    guard tail != 0 else { return nil }
    return itemClass(tail) == classId ? memory.u32(tail + ItemField.time) : 0
  }

  /// The page of `victim` to move: the one holding its LRU tail (its oldest
  /// item goes first), else the first of its pages; never the page of the
  /// item the operation in progress still reads. nil if there is none.
  func pageToTake(from victim: Int) -> Int? {
    let held = pinned != 0 ? page(of: pinned) : -1
    let tail = memory.off(geometry.classEntry(victim) + ClassField.lruTail)
    if tail != 0 && chunkClass(tail) == victim && page(of: tail) != held { return page(of: tail) }
    for page in 0..<pagesUsed
    where page != held && Int(memory.u8(geometry.pageTableOffset + page)) == victim {
      return page
    }
    return nil
  }

  /// The slab page of a chunk `chunkClass` accepted.
  @inline(__always) func page(of chunk: Int) -> Int {
    (chunk - geometry.slabOffset) / geometry.pageSize
  }

  /// Moves `page` from `victim` to `classId`: evicts every live item in it,
  /// takes its chunks off the victim's free list, hands the page over in
  /// the page table and the page counts, and cuts it into free chunks of
  /// `classId`. O(chunks in the page + the victim's free chunks).
  func movePage(_ page: Int, from victim: Int, to classId: Int) {
    let start = geometry.pageStart(page)
    let end = start + geometry.pageSize
    let chunkSize = geometry.chunkSizes[victim - 1]
    for chunk in stride(from: start, to: end - chunkSize + 1, by: chunkSize)
    where itemClass(chunk) == victim {
      _ = detach(chunk, reason: isDead(chunk) ? .reclaimed : .evicted)
    }
    let freeListDamaged = dropFreeChunks(of: victim, in: start..<end)
    memory.setU8(geometry.pageTableOffset + page, UInt8(classId))
    let victimEntry = geometry.classEntry(victim)
    let entry = geometry.classEntry(classId)
    memory.setU64(
      victimEntry + ClassField.pageCount, memory.u64(victimEntry + ClassField.pageCount) &- 1)
    memory.setU64(entry + ClassField.pageCount, memory.u64(entry + ClassField.pageCount) &+ 1)
    // With every item out and the free list walked, nothing of the victim's
    // can still point into the page, unless the region was damaged.
    let anchorInPage = [ClassField.lruHead, ClassField.lruTail, ClassField.freeHead].contains {
      (start..<end).contains(memory.off(victimEntry + $0))
    }
    if anchorInPage { damage("class \(victim) still points into page \(page)") }
    if anchorInPage || freeListDamaged { rebuildClass(victim, excluding: 0) }
    carve(page, classId)
    count(.slabsMoved)
  }

  /// Takes the chunks inside `range` off the free list of `classId`
  /// (walking it once, bounded) and recounts it.
  /// - Returns: whether the list was damaged (it is then cut there).
  private func dropFreeChunks(of classId: Int, in range: Range<Int>) -> Bool {
    let entry = geometry.classEntry(classId)
    var link = entry + ClassField.freeHead
    var kept: UInt64 = 0
    var cycle = CycleGuard()
    var damaged = false
    while true {
      let chunk = memory.off(link)
      if chunk == 0 { break }
      guard chunkClass(chunk) == classId && memory.u8(chunk + ItemField.itemFlags) == 0,
        !cycle.hasLooped(chunk)
      else {
        cut(link, "free list of class \(classId) reaches \(chunk)")
        damaged = true
        break
      }
      if range.contains(chunk) {
        memory.setOff(link, memory.off(chunk + ItemField.hashNext))
      } else {
        kept += 1
        link = chunk + ItemField.hashNext
      }
    }
    memory.setU64(entry + ClassField.freeCount, kept)
    return damaged
  }
}
