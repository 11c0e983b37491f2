import KHOCacheStore
import Testing

@Suite struct CacheStoreTests {
  let memory = SharedMemory(size: 4 << 20)
  let clock = ManualClock()

  func makeStore(itemSizeMax: Int = 64 << 10) throws -> CacheStore {
    try CacheStore.format(region: memory.map(), itemSizeMax: itemSizeMax, clock: clock.source)
  }

  @Test func setGetDelete() throws {
    let store = try makeStore()
    #expect(store.get("a") == nil)
    #expect(try store.set("a", value: bytes("hello"), flags: 42) == .stored)
    let item = try #require(store.get("a"))
    #expect(item.value == bytes("hello"))
    #expect(item.flags == 42)
    #expect(try store.delete("a"))
    #expect(try !store.delete("a"))
    #expect(store.get("a") == nil)
    try store.checkConsistency()
  }

  @Test func addReplaceAppendPrepend() throws {
    let store = try makeStore()
    #expect(try store.set("k", value: bytes("x"), mode: .replace) == .notStored)
    #expect(try store.set("k", value: bytes("mid"), flags: 7, mode: .add) == .stored)
    #expect(try store.set("k", value: bytes("other"), mode: .add) == .notStored)
    #expect(try store.set("k", value: bytes(">"), flags: 1, mode: .append) == .stored)
    #expect(try store.set("k", value: bytes("<"), flags: 2, mode: .prepend) == .stored)
    #expect(store.get("k")?.value == bytes("<mid>"))
    #expect(store.get("k")?.flags == 7)  // append/prepend keep the old flags
    #expect(try store.set("k", value: bytes("new"), mode: .replace) == .stored)
    #expect(store.get("k")?.value == bytes("new"))
    #expect(try store.set("absent", value: bytes("x"), mode: .append) == .notStored)
    try store.checkConsistency()
  }

  @Test func casSemantics() throws {
    let store = try makeStore()
    #expect(try store.set("c", value: bytes("1"), mode: .cas(1)) == .notFound)
    try store.set("c", value: bytes("1"))
    let first = try #require(store.get("c")).cas
    #expect(try store.set("c", value: bytes("2"), mode: .cas(first &+ 100)) == .exists)
    #expect(try store.set("c", value: bytes("2"), mode: .cas(first)) == .stored)
    let second = try #require(store.get("c")).cas
    #expect(second > first)
    #expect(try store.set("c", value: bytes("3"), mode: .cas(first)) == .exists)
    #expect(store.get("c")?.value == bytes("2"))
    let stats = store.stats()
    #expect(stats["cas_misses"] == 1 && stats["cas_hits"] == 1 && stats["cas_badval"] == 2)
  }

  @Test func incrDecr() throws {
    let store = try makeStore()
    #expect(try store.arithmetic("n", increment: true, delta: 1) == nil)
    try store.set("n", value: bytes("100"))
    #expect(try store.arithmetic("n", increment: false, delta: 95) == 5)
    #expect(store.get("n")?.value == bytes("5  "))  // in place, space-padded, as memcached
    #expect(try store.arithmetic("n", increment: false, delta: 10) == 0)  // floors at 0
    #expect(try store.arithmetic("n", increment: true, delta: 123_456) == 123_456)  // grows into a new item
    #expect(store.get("n")?.value == bytes("123456"))
    try store.set("max", value: bytes("18446744073709551615"))
    #expect(try store.arithmetic("max", increment: true, delta: 2) == 1)  // wraps
    try store.set("s", value: bytes("abc"))
    #expect(throws: CacheOperationError.nonNumeric) {
      try store.arithmetic("s", increment: true, delta: 1)
    }
    try store.set("e", value: [])
    #expect(throws: CacheOperationError.nonNumeric) {
      try store.arithmetic("e", increment: true, delta: 1)
    }
    try store.checkConsistency()
  }

  @Test func expiryFollowsTheCacheClock() throws {
    let store = try makeStore()
    try store.set("short", value: bytes("x"), exptime: 10)
    try store.set("never", value: bytes("x"))
    try store.set("absolute", value: bytes("x"), exptime: 1_700_000_000 + 20)
    try store.set("past", value: bytes("x"), exptime: 1_600_000_000)
    try store.set("negative", value: bytes("x"), exptime: -1)
    #expect(store.get("past") == nil && store.get("negative") == nil)
    clock.advance(seconds: 9)
    #expect(store.get("short") != nil)
    clock.advance(seconds: 1)
    #expect(store.get("short") == nil)
    #expect(store.get("absolute") != nil)
    clock.advance(seconds: 10)
    #expect(store.get("absolute") == nil)
    #expect(store.get("never") != nil)
    #expect(store.stats()["get_expired"] >= 2)
    try store.checkConsistency()
  }

  @Test func touchAndGat() throws {
    let store = try makeStore()
    try store.set("t", value: bytes("x"), exptime: 5)
    #expect(try store.touch("t", exptime: 100))
    #expect(try !store.touch("missing", exptime: 100))
    clock.advance(seconds: 50)
    #expect(try store.getAndTouch("t", exptime: 10)?.value == bytes("x"))
    clock.advance(seconds: 11)
    #expect(store.get("t") == nil)
  }

  @Test func flushAllNowAndDelayed() throws {
    let store = try makeStore()
    try store.set("a", value: bytes("1"))
    try store.flushAll()
    #expect(store.get("a") == nil)
    try store.set("b", value: bytes("2"))  // stored after the flush: alive
    #expect(store.get("b") != nil)
    clock.advance(seconds: 2)
    try store.flushAll(delay: 5)
    #expect(store.get("b") != nil)
    clock.advance(seconds: 5)
    #expect(store.get("b") == nil)
    try store.checkConsistency()
  }

  @Test func evictionUnderMemoryPressure() throws {
    let store = try makeStore()
    let value = [UInt8](repeating: 0x61, count: 1000)
    for index in 0..<10_000 { try store.set("key-\(index)", value: value) }
    let stats = store.stats()
    #expect(stats["evictions"] > 0)
    #expect(stats["curr_items"] < 10_000)
    #expect(stats["bytes"] <= UInt64(store.limitMaxBytes))
    #expect(store.get("key-9999")?.value == value)  // the newest survive
    #expect(store.get("key-0") == nil)  // the oldest went first
    try store.checkConsistency()
  }

  @Test func recentlyReadItemsSurviveEviction() throws {
    let store = try makeStore()
    let value = [UInt8](repeating: 0x62, count: 1000)
    try store.set("hot", value: value)
    for index in 0..<10_000 {
      if index % 100 == 0 {
        clock.advance(seconds: 61)  // past the LRU bump interval
        #expect(store.get("hot") != nil)
      }
      try store.set("cold-\(index)", value: value)
    }
    #expect(store.get("hot") != nil)
    try store.checkConsistency()
  }

  @Test func sizeLimits() throws {
    let store = try makeStore(itemSizeMax: 64 << 10)
    #expect(throws: CacheOperationError.tooLarge) {
      try store.set("big", value: [UInt8](repeating: 0, count: 64 << 10))
    }
    #expect(try store.set("fits", value: [UInt8](repeating: 0, count: (64 << 10) - 100)) == .stored)
    #expect(throws: CacheOperationError.badKey) {
      try store.set(String(repeating: "k", count: 251), value: [])
    }
    #expect(try store.set(String(repeating: "k", count: 250), value: []) == .stored)
    #expect(store.fits(keyLength: 10, valueLength: 1000))
    #expect(!store.fits(keyLength: 10, valueLength: 64 << 10))
  }

  @Test func freezeStopsMutationsButNotReads() throws {
    let store = try makeStore()
    try store.set("f", value: bytes("v"))
    store.freeze()
    #expect(store.isFrozen)
    #expect(throws: CacheOperationError.frozen) { try store.set("g", value: bytes("v")) }
    #expect(throws: CacheOperationError.frozen) { try store.delete("f") }
    #expect(throws: CacheOperationError.frozen) {
      try store.arithmetic("f", increment: true, delta: 1)
    }
    #expect(throws: CacheOperationError.frozen) { try store.touch("f", exptime: 1) }
    #expect(throws: CacheOperationError.frozen) { try store.flushAll() }
    #expect(store.get("f")?.value == bytes("v"))
    store.unfreeze()
    #expect(try store.set("g", value: bytes("v")) == .stored)
  }

  @Test func formatReportsItsRanges() throws {
    let store = try makeStore()
    #expect(store.memoryRanges == [CacheMemoryRange(offset: 0, length: 4 << 20)])
    #expect(store.formatVersion == 3)
    #expect(CacheStore.compatible == "kho-cache-v1")
  }

  @Test func regionSizeForMemoryLimit() throws {
    let size = CacheStore.regionSize(memoryLimit: 8 << 20, itemSizeMax: 1 << 20)
    let memory = SharedMemory(size: size)
    let store = try CacheStore.format(
      region: memory.map(), itemSizeMax: 1 << 20, clock: clock.source)
    #expect(store.limitMaxBytes == 8 << 20)
  }
}
