// The checks that stand between the store and a damaged region.
//
// After a handover the region comes from another process, which may have
// been buggy, or been hit by a stray write. `attach` checks the header words
// (see Validation.swift); everything else (bucket heads, chains, LRU and
// free-list links, item lengths and class ids) is checked here, when it is
// about to be used. The checks are a range compare, a page-table load and a
// modulo: cheap enough for every hop of every lookup. What fails a check is
// cut away (the link set to 0) or its class rebuilt from its pages, and
// reported; it is never followed.

/// Brent's cycle detection for one walk of a linked list: O(1) space, a
/// compare and an increment per step, and a loop is found within about
/// twice (tail + cycle length) steps. Legitimately long chains (a hash
/// flooded with colliding keys) are never mistaken for damage.
struct CycleGuard {
  private var saved = 0
  private var power = 1
  private var steps = 0

  /// Whether `node` was met before in this walk (nodes are never 0).
  @inline(__always) mutating func hasLooped(_ node: Int) -> Bool {
    if node == saved { return true }
    steps &+= 1
    if steps == power {
      saved = node
      power &<<= 1
      steps = 0
    }
    return false
  }
}

/// What `chunkClass` needs from the geometry, precomputed so that the check
/// costs no division: a shift for the page (page sizes are 1 MiB and other
/// powers of two in practice; a division otherwise) and, for the position
/// in the page, Lemire's divisibility test (n is a multiple of d iff
/// n * M <= M - 1 with M = 2^64 / d rounded up, for n, d < 2^32: positions
/// in a page are below 2^30).
struct ChunkTable {
  let slabBytes: UInt
  let pageSize: Int
  /// log2 of the page size, or -1 when it is not a power of two.
  let pageShift: Int
  /// By class id (index 0 unused): M for the chunk size, and the last
  /// position in a page a chunk may start at.
  let magic: [UInt64]
  let lastStart: [Int]

  init(_ geometry: Geometry) {
    slabBytes = UInt(geometry.pageCount * geometry.pageSize)
    pageSize = geometry.pageSize
    pageShift =
      geometry.pageSize & (geometry.pageSize - 1) == 0 ? geometry.pageSize.trailingZeroBitCount : -1
    magic = [0] + geometry.chunkSizes.map { UInt64.max / UInt64($0) &+ 1 }
    lastStart = [0] + geometry.chunkSizes.map { geometry.pageSize - $0 }
  }

  @inline(__always) func page(_ relative: UInt) -> Int {
    Int(pageShift >= 0 ? relative >> UInt(pageShift) : relative / UInt(pageSize))
  }

  /// Whether `inPage` (0 ..< page size) is where a chunk of `classId` starts.
  @inline(__always) func isChunkStart(_ inPage: Int, _ classId: Int) -> Bool {
    let m = magic[classId]
    return UInt64(truncatingIfNeeded: inPage) &* m <= m &- 1 && inPage <= lastStart[classId]
  }
}

extension Geometry {
  /// The offset of slab page `page`.
  @inline(__always) func pageStart(_ page: Int) -> Int { slabOffset + page * pageSize }
}

extension StoreCore {
  /// Pages handed out to classes; checked against the page count at attach
  /// and only ever raised by `grabPage` since.
  @inline(__always) var pagesUsed: Int { Int(truncatingIfNeeded: memory.u64(Header.pagesUsed)) }

  /// The class of the chunk that starts at `offset`, or 0 when `offset` is
  /// not the start of a chunk in a used slab page. Every item, LRU and free
  /// list offset read from the region goes through this before it is used.
  @inline(__always) func chunkClass(_ offset: Int) -> Int {
    // One unsigned compare covers both ends (and offsets that were negative).
    let relative = UInt(bitPattern: offset &- geometry.slabOffset)
    guard relative < chunkTable.slabBytes else { return 0 }
    let page = chunkTable.page(relative)
    guard page < pagesUsed else { return 0 }
    let classId = Int(memory.u8(geometry.pageTableOffset + page))
    guard classId >= 1 && classId <= geometry.classCount else { return 0 }
    let inPage = Int(relative) &- page &* geometry.pageSize
    guard chunkTable.isChunkStart(inPage, classId) else { return 0 }
    return classId
  }

  /// The class of the live item at `item` when it can be used as one: a
  /// chunk start in a used page, whose class byte is that page's class,
  /// marked linked, with a key of 1...250 bytes and header + key + value
  /// inside the chunk. 0 otherwise.
  @inline(__always) func itemClass(_ item: Int) -> Int {
    let classId = chunkClass(item)
    guard classId != 0, Int(memory.u8(item + ItemField.classId)) == classId, isLinked(item) else {
      return 0
    }
    let keyLength = self.keyLength(item)
    guard keyLength >= 1 && keyLength <= CacheLimits.maxKeyLength,
      ItemField.headerSize + keyLength + valueLength(item) <= geometry.chunkSizes[classId - 1]
    else { return 0 }
    return classId
  }

  /// Rebuilds the LRU and the free list of `classId` from its pages, after
  /// damage was found in one of them: every chunk that holds a sound linked
  /// item joins the LRU (in page order: the recency order is lost), every
  /// other chunk the free list (a chunk a damaged chain still names is
  /// then cut from that chain when walked: its hash or bucket will not
  /// match, or the chain will loop). `excluded`, the item the caller is
  /// moving, and an item being built are left out of both lists; the LRU
  /// item count includes neither. O(chunks of the class), on damage only.
  func rebuildClass(_ classId: Int, excluding excluded: Int) {
    let entry = geometry.classEntry(classId)
    for field in [
      ClassField.freeHead, ClassField.freeCount, ClassField.lruHead, ClassField.lruTail,
      ClassField.itemCount,
    ] {
      memory.setU64(entry + field, 0)
    }
    let chunkSize = geometry.chunkSizes[classId - 1]
    var tail = 0
    var items: UInt64 = 0
    for page in 0..<pagesUsed where Int(memory.u8(geometry.pageTableOffset + page)) == classId {
      let start = geometry.pageStart(page)
      for index in stride(from: geometry.pageSize / chunkSize - 1, through: 0, by: -1) {
        let chunk = start + index * chunkSize
        if chunk == excluded || chunk == building { continue }
        guard itemClass(chunk) == classId else {
          free(chunk, classId)
          continue
        }
        memory.setOff(chunk + ItemField.lruPrev, tail)
        memory.setOff(chunk + ItemField.lruNext, 0)
        if tail != 0 {
          memory.setOff(tail + ItemField.lruNext, chunk)
        } else {
          memory.setOff(entry + ClassField.lruHead, chunk)
        }
        tail = chunk
        items += 1
      }
    }
    memory.setOff(entry + ClassField.lruTail, tail)
    memory.setU64(entry + ClassField.itemCount, items)
  }
}
