import KHOCacheStore
import Testing

@Suite struct RebalanceTests {
  let clock = ManualClock()

  /// A value whose bytes say which key and which version they belong to.
  func value(_ seed: Int, length: Int) -> [UInt8] {
    let stamp = withUnsafeBytes(of: UInt64(seed)) { Array($0) }
    return Array(
      (stamp + Array(repeating: UInt8(truncatingIfNeeded: seed % 251), count: length)).prefix(
        length))
  }

  /// memcached's failure without an automover: in 64 MB with 1 MB items,
  /// one item of each size from 1 KB to 1 MB used to fail from ~460 KB on.
  @Test func everySizeFitsA64MBCache() throws {
    let itemSizeMax = 1 << 20
    let memory = SharedMemory(size: CacheStore.regionSize(memoryLimit: 64 << 20))
    let store = try CacheStore.format(
      region: memory.map(), itemSizeMax: itemSizeMax, clock: clock.source)
    var stored: [String: [UInt8]] = [:]
    for size in stride(from: 1024, through: itemSizeMax, by: 1024) {
      let key = "size-\(size)"
      let length = min(size, itemSizeMax - 64 - key.utf8.count)  // the item header
      let data = value(size, length: length)
      #expect(try store.set(key, value: data) == .stored, "\(size) bytes")
      #expect(store.get(key)?.value == data)
      stored[key] = data
    }
    for (key, data) in stored {
      if let seen = store.get(key) { #expect(seen.value == data, "\(key)") }
    }
    let stats = store.stats()
    #expect(stats["slabs_moved"] > 0 && stats["evictions"] > 0 && stats["store_no_memory"] == 0)
    try store.checkConsistency()
  }

  /// Small items fill the cache, then large ones, then small ones again:
  /// every set succeeds, every get returns what was stored or misses, and
  /// memory follows the sizes asked for.
  @Test func memoryFollowsChangingSizes() throws {
    let memory = SharedMemory(size: 4 << 20)
    let store = try CacheStore.format(
      region: memory.map(), itemSizeMax: 64 << 10, clock: clock.source)
    var model: [String: [UInt8]] = [:]
    var version = 0
    func phase(_ prefix: String, count: Int, lengths: ClosedRange<Int>) throws -> Int {
      for index in 0..<count {
        version += 1
        let key = "\(prefix)-\(index)"
        let data = value(version, length: lengths.lowerBound + (index * 7919) % (lengths.count))
        #expect(try store.set(key, value: data) == .stored)
        model[key] = data
      }
      var present = 0
      for (key, data) in model {
        guard let seen = store.get(key) else { continue }
        #expect(seen.value == data, "\(key)")
        if key.hasPrefix(prefix) { present += 1 }
      }
      try store.checkConsistency()
      // A second later: this phase's data is now newer than the last one's.
      clock.advance(seconds: 1)
      return present
    }
    let small = try phase("small", count: 40_000, lengths: 20...120)
    let large = try phase("large", count: 300, lengths: 16_000...40_000)
    // Most of the memory went to the large items: far more than the one or
    // two pages a class would have kept without moving pages.
    #expect(large > 60, "\(large) large items kept")
    let smallAgain = try phase("again", count: 40_000, lengths: 20...120)
    #expect(small > 10_000 && smallAgain > 10_000, "\(small), \(smallAgain) small items kept")
    let stats = store.stats()
    #expect(stats["slabs_moved"] > 0 && stats["store_no_memory"] == 0)
  }

  /// A page holding the item a command is still reading is never taken:
  /// an append on the only item of a class that must give its page.
  @Test func aPinnedItemKeepsItsPage() throws {
    let memory = SharedMemory(size: 1 << 20)
    let store = try CacheStore.format(
      region: memory.map(), itemSizeMax: 64 << 10, clock: clock.source)
    var index = 0
    // Fill every page with one class.
    while store.stats()["evictions"] == 0 {
      try store.set("fill-\(index)", value: value(index, length: 1000))
      index += 1
    }
    try store.set("grow", value: value(1, length: 1000))
    #expect(try store.set("grow", value: value(2, length: 30_000), mode: .append) == .stored)
    let grown = try #require(store.get("grow")).value
    #expect(grown == value(1, length: 1000) + value(2, length: 30_000))
    try store.checkConsistency()
  }
}
