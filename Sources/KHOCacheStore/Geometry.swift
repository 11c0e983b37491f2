/// The fixed shape of a region, decided by `format` and never changed after:
/// where the hash index, the page table and the slab pages are, and the
/// size classes. `attach` rebuilds it from the header and checks it.
struct Geometry: Equatable {
  var regionSize: Int
  var itemSizeMax: Int
  var pageSize: Int
  var bucketCount: Int
  var hashOffset: Int
  var pageTableOffset: Int
  var slabOffset: Int
  var pageCount: Int
  /// memcached's `-n`: the item space of class 1 beyond memcached's item
  /// struct. Part of the geometry: fixed when the store is formatted.
  var chunkSpace: Int = SizeClasses.defaultChunkSpace
  /// memcached's `-f`: each class's chunks this much bigger than the last.
  var growthFactor: Double = SizeClasses.defaultGrowthFactor
  /// Chunk size of class id `i + 1` (class ids start at 1; 0 means "none").
  var chunkSizes: [Int]

  var classCount: Int { chunkSizes.count }
  var slabEnd: Int { slabOffset + pageCount * pageSize }

  /// Size classes exactly as memcached 1.6.18's slabs_init builds them
  /// for `-n chunkSpace -f growthFactor -I itemSizeMax`: class 1 holds
  /// memcached's 48-byte item struct plus `chunkSpace`, each next class is
  /// `growthFactor` times the last (truncated, then 8-byte aligned) while
  /// below half a page divided by the factor; then half a page (memcached's
  /// slab_chunk_max, its last class). Using memcached's chunk sizes (not our
  /// 64-byte header plus the space) numbers the classes as memcached does,
  /// so `stats items`/`stats slabs` name the same class for the same value
  /// size (ours holds 5 bytes more overhead). memcached chunks larger
  /// items; kho-cache adds one class of a whole page for them, so it has
  /// one growth class fewer than memcached where a factor near 1 reaches
  /// the 63-class limit.
  static func chunkSizes(pageSize: Int, chunkSpace: Int, growthFactor: Double) -> [Int] {
    let chunkMax = pageSize / 2
    var sizes: [Int] = []
    var size = SizeClasses.memcachedItemStruct + chunkSpace
    while Double(size) < Double(chunkMax) / growthFactor && sizes.count < CacheLimits.maxClasses - 2
    {
      sizes.append(align8(size))
      size = Int(Double(align8(size)) * growthFactor)
    }
    sizes.append(chunkMax)
    sizes.append(pageSize)
    return sizes
  }

  /// Hash buckets for `bytes` of item memory: about one per 512 bytes, a
  /// power of two (rounded down, so that `regionSize(memoryLimit:)` and
  /// `format` agree), at least 1024.
  static func bucketCount(forItemBytes bytes: Int) -> Int {
    let wanted = max(1024, bytes / 512)
    return 1 << (Int.bitWidth - 1 - wanted.leadingZeroBitCount)
  }

  static func pageSize(itemSizeMax: Int) -> Int { alignUp(itemSizeMax, 4096) }

  /// Lays out a region of `regionSize` bytes; nil when it cannot hold the
  /// header, the index and at least one page.
  static func plan(regionSize: Int, itemSizeMax: Int, classes: SizeClasses = .init()) -> Geometry? {
    guard classes.isValid(itemSizeMax: itemSizeMax) else { return nil }
    let pageSize = pageSize(itemSizeMax: itemSizeMax)
    guard regionSize > Header.size else { return nil }
    let buckets = bucketCount(forItemBytes: regionSize - Header.size)
    let hashOffset = Header.size
    let pageTableOffset = alignUp(hashOffset + buckets * 8, 4096)
    let rest = regionSize - pageTableOffset
    // Each page also costs one byte of page table.
    var pages = max(0, rest / (pageSize + 1))
    while pages > 0 && alignUp(pageTableOffset + pages, 4096) + pages * pageSize > regionSize {
      pages -= 1
    }
    guard pages > 0 else { return nil }
    let slabOffset = alignUp(pageTableOffset + pages, 4096)
    guard slabOffset + pages * pageSize <= regionSize else { return nil }
    return Geometry(
      regionSize: regionSize, itemSizeMax: itemSizeMax, pageSize: pageSize,
      bucketCount: buckets, hashOffset: hashOffset, pageTableOffset: pageTableOffset,
      slabOffset: slabOffset, pageCount: pages, chunkSpace: classes.chunkSpace,
      growthFactor: classes.growthFactor,
      chunkSizes: chunkSizes(
        pageSize: pageSize, chunkSpace: classes.chunkSpace, growthFactor: classes.growthFactor))
  }

  /// The smallest class whose chunks hold `total` bytes, or nil.
  func classId(forTotal total: Int) -> Int? {
    var low = 0
    var high = chunkSizes.count
    while low < high {
      let mid = (low + high) / 2
      if chunkSizes[mid] < total { low = mid + 1 } else { high = mid }
    }
    return low < chunkSizes.count ? low + 1 : nil
  }

  func classEntry(_ classId: Int) -> Int { Header.classTable + (classId - 1) * ClassField.size }
  func bucket(_ hash: UInt32) -> Int {
    hashOffset + Int(hash & UInt32(truncatingIfNeeded: bucketCount - 1)) * 8
  }
}

/// memcached's `-n` and `-f`: how a store's size classes are sized. They
/// are chosen when the store is formatted and kept in its header; a store
/// attached after a handover keeps the ones it was formatted with.
public struct SizeClasses: Sendable, Equatable {
  /// memcached's default `-n`.
  public static let defaultChunkSpace = 48
  /// memcached's default `-f`.
  public static let defaultGrowthFactor = 1.25
  /// memcached 1.6's `sizeof(item)` with CAS, which class 1 adds `-n` to.
  static let memcachedItemStruct = 48

  /// Bytes of item space in class 1 beyond memcached's item struct (`-n`).
  public var chunkSpace: Int
  /// Each class's chunk size over the last's (`-f`).
  public var growthFactor: Double

  /// memcached's defaults, or the given `-n` and `-f`.
  public init(
    chunkSpace: Int = SizeClasses.defaultChunkSpace,
    growthFactor: Double = SizeClasses.defaultGrowthFactor
  ) {
    self.chunkSpace = chunkSpace
    self.growthFactor = growthFactor
  }

  /// memcached's checks (`-f` above 1, `-n` above 0) plus the bounds it
  /// lacks: a finite factor, and an `-n` of at most the largest item.
  public func isValid(itemSizeMax: Int) -> Bool {
    growthFactor > 1 && growthFactor.isFinite && chunkSpace > 0 && chunkSpace <= itemSizeMax
  }
}

@inline(__always) func align8(_ value: Int) -> Int { (value + 7) & ~7 }
@inline(__always) func alignUp(_ value: Int, _ alignment: Int) -> Int {
  (value + alignment - 1) / alignment * alignment
}

/// FNV-1a, 64 bits. Used for the key hash (part of format version 1: a new
/// image must hash keys exactly as the old one did) and the header checksum.
struct FNV1a {
  var state: UInt64 = 0xcbf2_9ce4_8422_2325
  @inline(__always) mutating func add(_ bytes: UnsafeRawBufferPointer) {
    for byte in bytes { state = (state ^ UInt64(byte)) &* 0x100_0000_01b3 }
  }
  mutating func add(_ value: UInt64) {
    withUnsafeBytes(of: value) { add($0) }
  }
}

/// The key hash of format version 1: FNV-1a 64 with a final avalanche (so
/// that the low bits that choose a bucket depend on every key byte).
@inline(__always) func keyHash(_ key: UnsafeRawBufferPointer) -> UInt32 {
  var fnv = FNV1a()
  fnv.add(key)
  var h = fnv.state
  h ^= h >> 33
  h &*= 0xff51_afd7_ed55_8ccd
  h ^= h >> 33
  return UInt32(truncatingIfNeeded: h)
}
