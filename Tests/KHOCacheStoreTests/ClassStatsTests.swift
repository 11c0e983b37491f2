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
}
