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

/// What `chunkClass` and `itemClass` need from the geometry, precomputed
/// so that the checks cost no division and no bounds check:
/// - a shift for the page (page sizes are 1 MiB and other powers of two in
///   practice; a division otherwise);
/// - an entry for each of the 256 values a page-table byte can take, so the
///   byte indexes it unchecked; ids that are no class (0, above the class
///   count) have `lastStart` -1, which no position passes;
/// - for the position in the page, Lemire's divisibility test (n is a
///   multiple of d iff n * M <= M - 1, M = 2^64 / d rounded up, for n and
///   d below 2^32: positions in a page are below 2^30).
struct ChunkTable {
  struct Entry {
    var magic: UInt64 = 0
    /// The last position in a page where a chunk of the class may start.
    var lastStart = -1
    /// The bytes of a chunk after the item header: key + value must fit.
    var payload = 0
  }

  let slabBytes: UInt
  let pageSize: Int
  /// log2 of the page size, or -1 when it is not a power of two.
  let pageShift: Int
  let entries: UnsafeMutablePointer<Entry>

  init(_ geometry: Geometry) {
    slabBytes = UInt(geometry.pageCount * geometry.pageSize)
    pageSize = geometry.pageSize
    pageShift =
      geometry.pageSize & (geometry.pageSize - 1) == 0 ? geometry.pageSize.trailingZeroBitCount : -1
    entries = .allocate(capacity: 256)
    entries.initialize(repeating: Entry(), count: 256)
    for (index, chunkSize) in geometry.chunkSizes.enumerated() {
      entries[index + 1] = Entry(
        magic: UInt64.max / UInt64(chunkSize) &+ 1, lastStart: geometry.pageSize - chunkSize,
        payload: chunkSize - ItemField.headerSize)
    }
  }

  /// Frees the table (called once, by the owning core's deinit).
  func deallocate() { entries.deallocate() }

  @inline(__always) func page(_ relative: UInt) -> Int {
    Int(
      truncatingIfNeeded: pageShift >= 0 ? relative &>> UInt(pageShift) : relative / UInt(pageSize))
  }

  /// Whether `inPage` (0 ..< page size) is where a chunk of class byte
  /// `classId` (any value 0...255) starts.
  @inline(__always) func isChunkStart(_ inPage: Int, _ classId: Int) -> Bool {
    let entry = entries[classId]
    return UInt64(truncatingIfNeeded: inPage) &* entry.magic <= entry.magic &- 1
      && inPage <= entry.lastStart
  }

  /// Whether key and value lengths fit a chunk of class `classId`.
  @inline(__always) func fits(keyLength: Int, valueLength: Int, _ classId: Int) -> Bool {
    keyLength &+ valueLength <= entries[classId].payload
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
    // Any byte value indexes the table; ids that are no class fail there.
    // That includes pages not handed out yet: attach checked their bytes
    // are 0, and only grabPage sets one, as it hands the page out.
    let classId = Int(memory.u8(geometry.pageTableOffset &+ page))
    let inPage = Int(bitPattern: relative) &- page &* geometry.pageSize
    guard chunkTable.isChunkStart(inPage, classId) else { return 0 }
    return classId
  }

  /// The class of the live item at `item` when it can be used as one: a
  /// chunk start in a used page, whose class byte is that page's class,
  /// marked linked, with a key of 1...250 bytes and header + key + value
  /// inside the chunk. 0 otherwise.
  @inline(__always) func itemClass(_ item: Int) -> Int {
    let classId = chunkClass(item)
    // A chunk start is at least a header before the end of the slab pages:
    // the offsets below cannot overflow, and stay inside the chunk.
    guard classId != 0, Int(memory.u8(item &+ ItemField.classId)) == classId,
      memory.u8(item &+ ItemField.itemFlags) & ~ItemField.pinned == ItemField.linked
    else { return 0 }
    let keyLength = Int(memory.u8(item &+ ItemField.keyLength))
    let valueLength = Int(memory.u32(item &+ ItemField.valueLength))
    guard UInt(bitPattern: keyLength &- 1) < UInt(CacheLimits.maxKeyLength),
      chunkTable.fits(keyLength: keyLength, valueLength: valueLength, classId)
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
  ///
  /// `reachable`, when given, decides which sound chunks are items: after
  /// a crash, only those a hash chain reaches (the others were leaving
  /// their chain, or never reached it, when the owner died).
  ///
  /// - Returns: the items in the rebuilt LRU and their bytes.
  @discardableResult
  func rebuildClass(_ classId: Int, excluding excluded: Int, reachable: ((Int) -> Bool)? = nil)
    -> (items: Int, bytes: Int)
  {
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
    var bytes = 0
    for page in 0..<pagesUsed where Int(memory.u8(geometry.pageTableOffset + page)) == classId {
      let start = geometry.pageStart(page)
      for index in stride(from: geometry.pageSize / chunkSize - 1, through: 0, by: -1) {
        let chunk = start + index * chunkSize
        if chunk == excluded || chunk == building { continue }
        guard itemClass(chunk) == classId, reachable?(chunk) ?? true else {
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
        bytes += totalSize(chunk)
      }
    }
    memory.setOff(entry + ClassField.lruTail, tail)
    memory.setU64(entry + ClassField.itemCount, items)
    return (Int(items), bytes)
  }
}
