/// The memory a store lives in: `size` bytes at `base`, mapped read-write
/// and shared. In production this is KHO arena memory; in tests, any
/// shared mapping. The store keeps no pointer into it, only offsets, so
/// the same bytes may be mapped at another address by the next process.
public struct CacheRegion: @unchecked Sendable {
  /// The first byte of the region, 8-byte aligned (page-aligned in practice).
  public let base: UnsafeMutableRawPointer
  /// The region's length in bytes.
  public let size: Int

  /// Describes `size` bytes at `base`.
  public init(base: UnsafeMutableRawPointer, size: Int) {
    self.base = base
    self.size = size
  }
}

/// A byte range of the region the store needs preserved across a handover,
/// as an offset from the region base (the caller adds the region's own
/// offset in the arena to get the `kho_mem` address).
public struct CacheMemoryRange: Sendable, Equatable {
  /// Offset from the region base.
  public var offset: Int
  /// Length in bytes.
  public var length: Int

  /// A range of `length` bytes at `offset`.
  public init(offset: Int, length: Int) {
    self.offset = offset
    self.length = length
  }
}

extension Geometry {
  /// Writes the geometry fields and their checksum into a fresh header.
  func write(to memory: RegionMemory) {
    memory.mutableBytes(Header.magic, 8).copyBytes(from: Header.magicBytes)
    memory.setU32(Header.version, CacheStore.formatVersion)
    memory.setU32(Header.headerSize, UInt32(Header.size))
    memory.setU64(Header.regionSize, UInt64(regionSize))
    memory.setU64(Header.itemSizeMax, UInt64(itemSizeMax))
    memory.setU64(Header.pageSize, UInt64(pageSize))
    memory.setU64(Header.bucketCount, UInt64(bucketCount))
    memory.setU64(Header.hashOffset, UInt64(hashOffset))
    memory.setU64(Header.pageTableOffset, UInt64(pageTableOffset))
    memory.setU64(Header.slabOffset, UInt64(slabOffset))
    memory.setU64(Header.pageCount, UInt64(pageCount))
    memory.setU32(Header.classCount, UInt32(classCount))
    memory.setU64(Header.chunkSpace, UInt64(chunkSpace))
    memory.setU64(Header.growthFactor, growthFactor.bitPattern)
    for (index, chunk) in chunkSizes.enumerated() {
      let entry = classEntry(index + 1)
      memory.setU64(entry + ClassField.chunkSize, UInt64(chunk))
      memory.setU64(entry + ClassField.perPage, UInt64(pageSize / chunk))
    }
    memory.setU64(Header.checksum, Geometry.checksum(memory, classCount: classCount))
  }

  /// FNV-1a over the geometry fields and each class's chunk size and count
  /// per page: everything that must never change after `format`.
  static func checksum(_ memory: RegionMemory, classCount: Int) -> UInt64 {
    var fnv = FNV1a()
    fnv.add(memory.bytes(0, Header.geometryEnd))
    for index in 0..<min(classCount, CacheLimits.maxClasses) {
      let entry = Header.classTable + index * ClassField.size
      fnv.add(memory.u64(entry + ClassField.chunkSize))
      fnv.add(memory.u64(entry + ClassField.perPage))
    }
    return fnv.state
  }

  /// Reads and checks the geometry of an existing region (the header only:
  /// O(classes), never O(items)).
  static func read(from memory: RegionMemory) throws(CacheRegionError) -> Geometry {
    guard memory.size >= Header.size else { throw .regionTooSmall(size: memory.size) }
    guard Array(memory.bytes(Header.magic, 8)) == Header.magicBytes else { throw .badMagic }
    let version = memory.u32(Header.version)
    guard version == CacheStore.formatVersion else { throw .unsupportedVersion(version) }
    guard memory.u32(Header.headerSize) == UInt32(Header.size) else {
      throw .corrupt("header size")
    }
    let recorded = memory.u64(Header.regionSize)
    guard recorded == UInt64(memory.size) else {
      throw .sizeMismatch(recorded: recorded, mapped: memory.size)
    }
    let classCount = Int(memory.u32(Header.classCount))
    guard (1...CacheLimits.maxClasses).contains(classCount) else {
      throw .corrupt("class count \(classCount)")
    }
    guard checksum(memory, classCount: classCount) == memory.u64(Header.checksum) else {
      throw .checksumMismatch
    }
    let geometry = Geometry(
      regionSize: memory.size, itemSizeMax: memory.off(Header.itemSizeMax),
      pageSize: memory.off(Header.pageSize),
      bucketCount: memory.off(Header.bucketCount), hashOffset: memory.off(Header.hashOffset),
      pageTableOffset: memory.off(Header.pageTableOffset),
      slabOffset: memory.off(Header.slabOffset),
      pageCount: memory.off(Header.pageCount),
      // 0: formatted by an image that had no -n/-f, with memcached's defaults.
      chunkSpace: memory.u64(Header.chunkSpace) == 0
        ? SizeClasses.defaultChunkSpace : Int(truncatingIfNeeded: memory.u64(Header.chunkSpace)),
      growthFactor: memory.u64(Header.growthFactor) == 0
        ? SizeClasses.defaultGrowthFactor : Double(bitPattern: memory.u64(Header.growthFactor)),
      chunkSizes: (1...classCount).map {
        memory.off(Header.classTable + ($0 - 1) * ClassField.size)
      })
    try geometry.check()
    return geometry
  }

  /// The geometry must be exactly what `plan` would build for this region:
  /// that one comparison covers every bound (index and pages inside the
  /// region, no overlap, classes increasing and within a page). `-n` and
  /// `-f` are outside the checksum, but the chunk sizes they must rebuild
  /// are inside it, so a damaged `-n` or `-f` is refused here too (one
  /// that happens to build the same classes is harmless: only the figure
  /// `stats settings` shows would differ).
  func check() throws(CacheRegionError) {
    guard (1024...(1 << 30)).contains(itemSizeMax) else {
      throw .corrupt("item size max \(itemSizeMax)")
    }
    let classes = SizeClasses(chunkSpace: chunkSpace, growthFactor: growthFactor)
    guard classes.isValid(itemSizeMax: itemSizeMax) else {
      throw .corrupt("size classes -n \(chunkSpace) -f \(growthFactor)")
    }
    guard
      let expected = Geometry.plan(
        regionSize: regionSize, itemSizeMax: itemSizeMax, classes: classes)
    else {
      throw .corrupt("geometry does not fit the region")
    }
    guard expected == self else {
      throw .corrupt("geometry differs from the layout of format version 1")
    }
  }
}
