import Testing

@testable import KHOCacheStore

/// `stats items` / `stats slabs` figures, and that they survive a handover.
@Suite struct ClassStatsTests {
  let memory = SharedMemory(size: 4 << 20)
  let clock = ManualClock()

  @Test func classesReportTheirItemsChunksAndBytes() throws {
    let store = try CacheStore.format(
      region: memory.map(), itemSizeMax: 64 << 10, clock: clock.source)
    try store.set("small", value: bytes("abc"))
    try store.set("big", value: [UInt8](repeating: 0x62, count: 2000))
    let classes = store.classStats()
    #expect(classes.count == 2)
    for info in classes {
      #expect(info.items == 1)
      #expect(info.pages * info.chunksPerPage == info.items + info.freeChunks)
      #expect(info.requestedBytes <= info.chunkSize)
      #expect(info.evicted == 0)
    }
    #expect(store.bytesInPages == 2 * store.pageSize)
  }

  @Test func evictionsAreCountedPerClassAndSurviveAHandover() throws {
    let first = memory.map()
    let store = try CacheStore.format(region: first, itemSizeMax: 64 << 10, clock: clock.source)
    let value = [UInt8](repeating: 0x61, count: 1000)
    for index in 0..<10_000 { try store.set("key-\(index)", value: value) }
    let evicted = store.classStats().map(\.evicted).reduce(0, +)
    #expect(evicted > 0 && evicted == store.stats()["evictions"])
    store.freeze()
    let next = try CacheStore.attach(region: memory.map(), clock: ManualClock().source)
    #expect(next.classStats().map(\.evicted).reduce(0, +) == evicted)
    next.resetStats()
    #expect(next.classStats().allSatisfy { $0.evicted == 0 })
  }

  @Test func perClassCountersFitTheReservedHeaderWords() {
    #expect(Header.statsEnd <= Header.classEvictions)
    #expect(Header.classEvictions + CacheLimits.maxClasses * 8 <= Header.clockEpochWallSeconds)
  }

  @Test func newCountersFitTheHeader() {
    #expect(Header.statsEnd <= Header.chunkSpace)
    #expect(Header.growthFactor + 8 <= Header.classEvictions)
    #expect(
      Header.classCounters == Header.classTable + CacheLimits.maxClasses * ClassField.size)
    #expect(
      Header.classCounter(.expiredUnfetched, CacheLimits.maxClasses) + 8 <= Header.size)
  }

  @Test func evictionsWithAnExpiryAndReclaimsAreCountedPerClass() throws {
    let store = try CacheStore.format(
      region: memory.map(), itemSizeMax: 64 << 10, clock: clock.source)
    let value = [UInt8](repeating: 0x61, count: 1000)
    for index in 0..<10_000 {
      try store.set("key-\(index)", value: value, exptime: index % 2 == 0 ? 0 : 3600)
    }
    let classes = store.classStats()
    let evicted = classes.map(\.evicted).reduce(0, +)
    let nonzero = classes.map(\.evictedNonzero).reduce(0, +)
    #expect(nonzero > 0 && nonzero < evicted)
    #expect(classes.map(\.evictedUnfetched).reduce(0, +) == evicted)
    #expect(store.stats()["evicted_unfetched"] == evicted)
    // An expired item at its class's LRU tail is reclaimed by the next store.
    try store.set("short", value: [UInt8](repeating: 0x62, count: 30_000), exptime: 1)
    clock.advance(seconds: 3)
    try store.set("next", value: [UInt8](repeating: 0x63, count: 30_000))
    let reclaimed = store.classStats().map(\.reclaimed).reduce(0, +)
    #expect(reclaimed >= 1 && store.stats()["expired_unfetched"] >= 1)
    store.resetStats()
    #expect(store.classStats().allSatisfy { $0.evictedNonzero == 0 && $0.reclaimed == 0 })
  }
}

/// memcached's `-n` and `-f`, and that a store keeps its own across a handover.
@Suite struct SizeClassTests {
  let memory = SharedMemory(size: 4 << 20)
  let clock = ManualClock()

  @Test func classesAreMemcachedsForTheSameOptions() {
    // memcached 1.6.18 -n 100 -f 1.5 -I 1m: classes 1, 3, 6, 10, 16, 19.
    let sizes = Geometry.chunkSizes(pageSize: 1 << 20, chunkSpace: 100, growthFactor: 1.5)
    #expect(
      [sizes[0], sizes[2], sizes[5], sizes[9], sizes[15], sizes[18]] == [
        152, 352, 1192, 6048, 68904, 232560,
      ])
    #expect(sizes.suffix(2) == [1 << 19, 1 << 20])
    // And the defaults: 96, 120, 152, ... as before.
    let defaults = Geometry.chunkSizes(pageSize: 1 << 20, chunkSpace: 48, growthFactor: 1.25)
    #expect(Array(defaults.prefix(3)) == [96, 120, 152] && defaults.count == 40)
    // A factor near 1 stops at the 63 class ids.
    #expect(
      Geometry.chunkSizes(pageSize: 1 << 20, chunkSpace: 1, growthFactor: 1.0001).count
        == CacheLimits.maxClasses)
  }

  @Test func badOptionsAreRefusedByFormat() {
    for classes in [
      SizeClasses(chunkSpace: 0), SizeClasses(chunkSpace: -5), SizeClasses(chunkSpace: 2 << 20),
      SizeClasses(growthFactor: 1), SizeClasses(growthFactor: 0.5),
      SizeClasses(growthFactor: .nan), SizeClasses(growthFactor: .infinity),
    ] {
      #expect(throws: CacheRegionError.self) {
        _ = try CacheStore.format(region: memory.map(), sizeClasses: classes)
      }
    }
  }

  @Test func anAttachedStoreKeepsItsSizeClasses() throws {
    let classes = SizeClasses(chunkSpace: 100, growthFactor: 1.5)
    let store = try CacheStore.format(
      region: memory.map(), itemSizeMax: 64 << 10, sizeClasses: classes, clock: clock.source)
    for size in [1, 200, 5000, 30000] {
      try store.set("k\(size)", value: [UInt8](repeating: 0x61, count: size))
    }
    let before = store.classStats()
    store.freeze()
    let next = try CacheStore.attach(region: memory.map(), clock: clock.source)
    #expect(next.sizeClasses == classes)
    #expect(next.classStats().map(\.chunkSize) == before.map(\.chunkSize))
    for size in [1, 200, 5000, 30000] {
      #expect(next.get("k\(size)")?.value.count == size)
    }
  }

  @Test func aDamagedFactorOrSpaceIsRefusedNotUsed() throws {
    for (offset, value) in [
      (Header.growthFactor, (1.6).bitPattern), (Header.growthFactor, Double.nan.bitPattern),
      (Header.growthFactor, 0), (Header.chunkSpace, 90), (Header.chunkSpace, UInt64.max),
    ] {
      let region = memory.map()
      let store = try CacheStore.format(
        region: region, itemSizeMax: 64 << 10,
        sizeClasses: SizeClasses(chunkSpace: 100, growthFactor: 1.5), clock: clock.source)
      store.freeze()
      region.base.storeBytes(of: value, toByteOffset: offset, as: UInt64.self)
      #expect(throws: CacheRegionError.self) {
        _ = try CacheStore.attach(region: memory.map(), clock: clock.source)
      }
    }
  }

  @Test func aStoreOfAnImageWithoutTheOptionsHasTheDefaults() throws {
    let region = memory.map()
    let store = try CacheStore.format(region: region, itemSizeMax: 64 << 10, clock: clock.source)
    try store.set("k", value: bytes("v"))
    store.freeze()
    // What an image before -n/-f left: the words are zero.
    region.base.storeBytes(of: UInt64(0), toByteOffset: Header.chunkSpace, as: UInt64.self)
    region.base.storeBytes(of: UInt64(0), toByteOffset: Header.growthFactor, as: UInt64.self)
    let next = try CacheStore.attach(region: memory.map(), clock: clock.source)
    #expect(next.sizeClasses == SizeClasses())
    #expect(next.get("k")?.value == bytes("v"))
  }
}
