/// Recovery after a crash: the previous owner died at some instruction of
/// some mutation, without freezing. What each mutation's order of stores
/// guarantees, and so what recovery may rely on:
///
/// - an item is filled and sealed (its checksum written) before it is
///   linked, and linked (flag, then hash chain) before it is findable;
/// - an item leaves its hash chain before its chunk is freed;
/// - every link is one aligned 8-byte store, so a chain is never half
///   written;
/// - a page is counted used before the page table gives it a class.
///
/// So the hash chains, walked with the usual checks, only ever reach items
/// that were whole when linked, and whose checksum says whether they still
/// are. Everything else (the page counts, the LRUs, the free lists, the item
/// counters) is rebuilt here from the page table and the chunks
/// themselves: O(chunks in used pages), done once, before the store serves.
/// A chunk that was being filled, or freed, at the instant of the crash
/// ends on a free list; an item that was leaving its chain ends in an LRU,
/// unreachable, until it is evicted. The LRU order is lost (memcached
/// comes back empty).
extension StoreCore {
  /// Rebuilds the allocator and LRU state and the item counters of a store
  /// found unfrozen. Returns the items kept.
  @discardableResult
  func recoverAfterCrash() -> Int {
    repairPageTable()
    let reached = reachableItems()
    var items = 0
    var bytes = 0
    for classId in 1...geometry.classCount {
      let rebuilt = rebuildClass(classId, excluding: 0) { reached.contains($0) }
      items += rebuilt.items
      bytes += rebuilt.bytes
    }
    memory.setU64(Header.stats + StatCounter.currItems.rawValue * 8, UInt64(items))
    memory.setU64(Header.stats + StatCounter.bytes.rawValue * 8, UInt64(bytes))
    return items
  }

  /// The items the hash chains reach, as a bitmap over the slab (one bit
  /// per 8 bytes). A chain is cut where it meets anything but a sound item
  /// of its own bucket, or an item met before (a loop, or two chains
  /// joined).
  private func reachableItems() -> ItemBitmap {
    var reached = ItemBitmap(slabOffset: geometry.slabOffset, slabEnd: geometry.slabEnd)
    for bucket in 0..<geometry.bucketCount {
      var link = geometry.hashOffset + bucket * 8
      while true {
        let item = memory.off(link)
        if item == 0 { break }
        guard itemClass(item) != 0, !reached.contains(item),
          geometry.bucket(memory.u32(item + ItemField.hash)) == geometry.hashOffset + bucket * 8
        else {
          cut(link, "hash chain of bucket \(bucket) reaches \(item) after the crash")
          break
        }
        reached.insert(item)
        link = item + ItemField.hashNext
      }
    }
    return reached
  }

  /// Every used page gets a valid class (a page counted used but not yet
  /// given one was never cut: it goes to class 1, whose rebuild finds no
  /// item in it), unused pages none, and each class the page count the
  /// table says.
  private func repairPageTable() {
    let used = min(pagesUsed, geometry.pageCount)
    memory.setU64(Header.pagesUsed, UInt64(used))
    var pages = [UInt64](repeating: 0, count: geometry.classCount + 1)
    for page in 0..<geometry.pageCount {
      let at = geometry.pageTableOffset + page
      var classId = Int(memory.u8(at))
      if page >= used {
        if classId != 0 { memory.setU8(at, 0) }
        continue
      }
      if classId < 1 || classId > geometry.classCount {
        classId = 1
        memory.setU8(at, 1)
      }
      pages[classId] += 1
    }
    for classId in 1...geometry.classCount {
      memory.setU64(geometry.classEntry(classId) + ClassField.pageCount, pages[classId])
    }
  }
}

/// A set of item offsets, one bit per 8 bytes of slab.
struct ItemBitmap {
  private var words: [UInt64]
  private let slabOffset: Int

  init(slabOffset: Int, slabEnd: Int) {
    self.slabOffset = slabOffset
    words = [UInt64](repeating: 0, count: (slabEnd - slabOffset) / 512 + 1)
  }

  func contains(_ offset: Int) -> Bool {
    let bit = (offset - slabOffset) >> 3
    return words[bit >> 6] & (1 << UInt64(bit & 63)) != 0
  }

  mutating func insert(_ offset: Int) {
    let bit = (offset - slabOffset) >> 3
    words[bit >> 6] |= 1 << UInt64(bit & 63)
  }
}
