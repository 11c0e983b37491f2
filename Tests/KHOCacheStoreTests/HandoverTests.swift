import KHOCacheStore
import Testing

#if canImport(Glibc)
  import Glibc
#endif

@Suite struct HandoverTests {
  let memory = SharedMemory(size: 4 << 20)
  let clock = ManualClock()

  @Test func attachThroughAnotherMapping() throws {
    let first = memory.map()
    let store = try CacheStore.format(region: first, itemSizeMax: 64 << 10, clock: clock.source)
    for index in 0..<500 {
      try store.set(
        "key-\(index)", value: bytes("value-\(index)"), flags: UInt32(index), exptime: 100)
    }
    let cas = try #require(store.get("key-7")).cas
    clock.advance(seconds: 30)
    _ = store.get("key-1")
    store.freeze()

    let second = memory.map()
    #expect(second.base != first.base)
    // A new process: a fresh clock whose monotonic time has nothing to do with the old one.
    let nextClock = ManualClock()
    nextClock.advance(seconds: 1_000_000)
    let next = try CacheStore.attach(region: second, clock: nextClock.source)
    for index in 0..<500 {
      let item = try #require(next.get("key-\(index)"))
      #expect(item.value == bytes("value-\(index)") && item.flags == UInt32(index))
    }
    #expect(next.get("key-7")?.cas == cas)
    try next.checkConsistency()
    // The cache clock resumed at 30 s: 70 s of life left, not 0, not 1,000,000.
    nextClock.advance(seconds: 69)
    #expect(next.get("key-3") != nil)
    nextClock.advance(seconds: 1)
    #expect(next.get("key-3") == nil)
    // CAS keeps counting from where it was.
    try next.set("fresh", value: bytes("x"))
    #expect(try #require(next.get("fresh")).cas > cas)
    #expect(next.stats()["total_items"] == 501)
  }

  @Test func attachRefusesAnUnfrozenStore() throws {
    let store = try CacheStore.format(
      region: memory.map(), itemSizeMax: 64 << 10, clock: clock.source)
    try store.set("a", value: bytes("1"))
    #expect(throws: CacheRegionError.notFrozen) {
      try CacheStore.attach(region: memory.map(), clock: clock.source)
    }
    _ = try CacheStore.attach(region: memory.map(), clock: clock.source, requireFrozen: false)
  }

  @Test func attachRefusesCorruptHeaders() throws {
    let region = memory.map()
    let store = try CacheStore.format(region: region, itemSizeMax: 64 << 10, clock: clock.source)
    try store.set("a", value: bytes("1"))
    store.freeze()
    func attach() throws(CacheRegionError) {
      _ = try CacheStore.attach(region: memory.map(), clock: clock.source)
    }
    func patch(_ offset: Int, _ value: UInt8, _ expected: CacheRegionError) {
      let saved = region.base.load(fromByteOffset: offset, as: UInt8.self)
      region.base.storeBytes(of: value, toByteOffset: offset, as: UInt8.self)
      #expect(throws: expected) { try attach() }
      region.base.storeBytes(of: saved, toByteOffset: offset, as: UInt8.self)
    }
    patch(0, UInt8(ascii: "X"), .badMagic)
    patch(8, 4, .unsupportedVersion(4))
    patch(32, 0x55, .checksumMismatch)  // page size
    #expect(throws: CacheRegionError.sizeMismatch(recorded: UInt64(4 << 20), mapped: 2 << 20)) {
      _ = try CacheStore.attach(
        region: CacheRegion(base: region.base, size: 2 << 20), clock: clock.source)
    }
    // Anchors: a class's LRU head pointing into the header.
    let lruHead = 1024 + 32
    let saved = region.base.load(fromByteOffset: lruHead, as: UInt64.self)
    region.base.storeBytes(of: UInt64(64), toByteOffset: lruHead, as: UInt64.self)
    #expect(throws: CacheRegionError.self) { try attach() }
    region.base.storeBytes(of: saved, toByteOffset: lruHead, as: UInt64.self)
    // Zeroed memory is no store.
    let blank = SharedMemory(size: 1 << 20)
    #expect(throws: CacheRegionError.badMagic) { _ = try CacheStore.attach(region: blank.map()) }
    try attach()
  }

  @Test func formatRefusesUnusableRegions() throws {
    let small = SharedMemory(size: 8192)
    #expect(throws: CacheRegionError.regionTooSmall(size: 8192)) {
      _ = try CacheStore.format(region: small.map())
    }
    #expect(throws: CacheRegionError.invalidItemSizeMax(10)) {
      _ = try CacheStore.format(region: memory.map(), itemSizeMax: 10)
    }
  }

  @Test func concurrentClients() async throws {
    let store = try CacheStore.format(
      region: memory.map(), itemSizeMax: 64 << 10, clock: clock.source)
    await withTaskGroup(of: Void.self) { group in
      for worker in 0..<4 {
        group.addTask {
          for index in 0..<2000 {
            let key = "w\(worker)-\(index % 300)"
            _ = try? store.set(key, value: bytes("\(index)"))
            _ = store.get(key)
            _ = try? store.arithmetic("counter", increment: true, delta: 1)
          }
        }
      }
    }
    try store.checkConsistency()
  }
}
