import Testing

@testable import KHOCollections

#if canImport(Glibc)
  import Glibc
#endif

/// A region of plain memory, freed when the test ends.
final class TestRegion {
  let bytes: UnsafeMutableRawBufferPointer
  init(_ count: Int) {
    bytes = .allocate(byteCount: count, alignment: 64)
    bytes.initializeMemory(as: UInt8.self, repeating: 0xAA)
  }
  deinit { bytes.deallocate() }
}

/// A deterministic generator, so a failing fuzz case can be replayed.
struct SplitMix: RandomNumberGenerator {
  var state: UInt64
  mutating func next() -> UInt64 {
    state &+= 0x9e37_79b9_7f4a_7c15
    var z = state
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    return z ^ (z >> 31)
  }
}

@Suite struct ArenaHashMapTests {
  @Test func storesReplacesAndRemovesByteStringsAndFixedWidthValues() throws {
    let memory = TestRegion(1 << 16)
    let map = try ArenaHashMap<String, [UInt8]>.format(memory.bytes, bucketCount: 16)
    map["alpha"] = [1, 2, 3]
    map["beta"] = Array(repeating: 7, count: 300)
    #expect(map["alpha"] == [1, 2, 3])
    map["alpha"] = [9]
    #expect(map["alpha"] == [9])
    #expect(map.count == 2)
    #expect(map.removeValue(forKey: "beta"))
    #expect(map["beta"] == nil)
    #expect(map.count == 1)

    let fixedMemory = TestRegion(1 << 16)
    let fixed = try ArenaHashMap<UInt64, Double>.format(fixedMemory.bytes)
    for i in 0..<100 { fixed[UInt64(i)] = Double(i) / 2 }
    #expect((0..<100).allSatisfy { fixed[UInt64($0)] == Double($0) / 2 })
  }

  @Test func readsValuesThroughASpanAndWalksEveryEntry() throws {
    let memory = TestRegion(1 << 16)
    let map = try ArenaHashMap<String, String>.format(memory.bytes, bucketCount: 8)
    for i in 0..<50 { map["k\(i)"] = "v\(i)" }
    let length = map.withValueSpan(forKey: "k7") { span in span.byteCount }
    #expect(length == 2)
    let all = Dictionary(uniqueKeysWithValues: map.map { ($0.key, $0.value) })
    #expect(all.count == 50)
    #expect(all["k42"] == "v42")
  }

  @Test func expiresEntriesByTheirTTL() throws {
    let memory = TestRegion(1 << 14)
    nonisolated(unsafe) var clock: UInt64 = 1000
    let map = try ArenaHashMap<String, UInt64>.format(memory.bytes, now: { clock })
    try map.set("short", 1, expiresAt: 1010)
    try map.set("forever", 2)
    #expect(map["short"] == 1)
    clock = 1010
    #expect(map["short"] == nil)
    #expect(map["forever"] == 2)
    #expect(map.expirations == 1)
    #expect(map.count == 1)
  }

  @Test func evictsTheLeastRecentlyUsedAtTheMemoryBound() throws {
    // Sixteen slots (room in the table for twelve), then memory for ten
    // entries of 8 + 8 bytes, 64 each: the memory is the bound.
    let memory = TestRegion(ArenaHashMap<UInt64, UInt64>.headerSize + 16 * 8 + 64 * 10)
    let map = try ArenaHashMap<UInt64, UInt64>.format(memory.bytes, bucketCount: 16)
    for i in 0..<10 { map[UInt64(i)] = UInt64(i) }
    #expect(map.count == 10)
    _ = map[0]  // 0 becomes the most recent; 1 is now the least
    map[100] = 100
    #expect(map.evictions == 1)
    #expect(map[1] == nil)
    #expect(map[0] == 0)
    #expect(map[100] == 100)
    let small = TestRegion(4096)
    let bytesMap = try ArenaHashMap<UInt64, [UInt8]>.format(small.bytes, bucketCount: 16)
    #expect(throws: ArenaHashMap<UInt64, [UInt8]>.SetError.self) {
      try bytesMap.set(1, [UInt8](repeating: 0, count: 8192))
    }
  }

  @Test func attachesInTheNextImageWithNoFixUpAtAnotherAddress() throws {
    let first = TestRegion(1 << 16)
    let map = try ArenaHashMap<String, [UInt8]>.format(first.bytes, bucketCount: 32)
    for i in 0..<200 { map["session-\(i)"] = Array("state \(i)".utf8) }
    let second = TestRegion(1 << 16)
    second.bytes.copyMemory(from: UnsafeRawBufferPointer(first.bytes))
    let attached = try ArenaHashMap<String, [UInt8]>.attach(second.bytes)
    #expect(attached.count == 200)
    #expect((0..<200).allSatisfy { attached["session-\($0)"] == Array("state \($0)".utf8) })
  }

  @Test func growsIntoABiggerRegionAndRehashes() throws {
    let small = TestRegion(1 << 14)
    let map = try ArenaHashMap<UInt64, UInt64>.format(small.bytes, bucketCount: 16)
    var i: UInt64 = 0
    while (try? map.set(i, i * 3)) != nil, map.evictions == 0 { i += 1 }
    let kept = (0...i).filter { map[$0] != nil }
    let big = TestRegion(1 << 19)
    big.bytes.copyMemory(from: UnsafeRawBufferPointer(small.bytes))
    let grown = try ArenaHashMap<UInt64, UInt64>.attach(big.bytes)
    #expect(grown.capacityBytes == 1 << 19)
    try grown.rehash(bucketCount: 1024)
    #expect(grown.bucketCount == 1024)
    #expect(kept.allSatisfy { grown[$0] == $0 * 3 })
    for j in 10_000..<12_000 { grown[UInt64(j)] = UInt64(j) }
    #expect(grown.evictions == map.evictions)
    #expect(kept.allSatisfy { grown[$0] == $0 * 3 })
  }

  @Test func doublesTheTableAsItFillsWithoutLosingTheOrderOfUse() throws {
    let memory = TestRegion(1 << 20)
    let map = try ArenaHashMap<UInt64, UInt64>.format(memory.bytes, bucketCount: 16)
    for i in 0..<5000 { map[UInt64(i)] = UInt64(i) * 7 }
    #expect(map.bucketCount >= 5000 * 4 / 3)
    #expect(map.count == 5000 && map.evictions == 0)
    #expect((0..<5000).allSatisfy { map[UInt64($0)] == UInt64($0) * 7 })
    for i in stride(from: 0, to: 5000, by: 2) { map.removeValue(forKey: UInt64(i)) }
    #expect((0..<5000).allSatisfy { map[UInt64($0)] == ($0 % 2 == 0 ? nil : UInt64($0) * 7) })
    #expect(map.count == 2500)
    #expect(map.damage == 0)
  }

  @Test func refusesHeadersItCannotTrust() throws {
    let memory = TestRegion(1 << 12)
    #expect(throws: ArenaAttachError.self) { try ArenaHashMap<UInt64, UInt64>.attach(memory.bytes) }
    _ = try ArenaHashMap<UInt64, UInt64>.format(memory.bytes, bucketCount: 16)
    memory.bytes.storeBytes(of: UInt64(3), toByteOffset: 32, as: UInt64.self)  // not a power of two
    #expect(throws: ArenaAttachError.self) { try ArenaHashMap<UInt64, UInt64>.attach(memory.bytes) }
    #expect(throws: ArenaAttachError.self) {
      try ArenaHashMap<UInt64, UInt64>.attach(
        UnsafeMutableRawBufferPointer(rebasing: memory.bytes[0..<100]))
    }
  }

  @Test func refusesAMapOfAnOlderLayoutVersionClearly() throws {
    typealias Map = ArenaHashMap<String, UInt64>
    #expect(Map.version == 2)
    #expect(Map.compatible == "kho-collections,hash-map-v2")
    let memory = TestRegion(1 << 14)
    let map = try Map.format(memory.bytes, bucketCount: 16)
    map["kept"] = 1
    // What a version-1 image left: same magic, version 1 (chained entries
    // with a 64-byte header), which this image must not read as its own.
    memory.bytes.storeBytes(of: UInt32(1), toByteOffset: 8, as: UInt32.self)
    #expect(throws: ArenaAttachError.unsupportedVersion(1)) { try Map.attach(memory.bytes) }
    #expect(ArenaAttachError.unsupportedVersion(1).description == "unsupported version 1")
  }

  /// A key length written into an entry that runs past its memory must
  /// not be compared: the region ends at an unreadable page, so a read
  /// past the entry would crash the test.
  @Test func neverReadsAKeyPastItsEntryWhateverItsLengthSays() throws {
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let mapping = try #require(
      mmap(nil, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
    defer { munmap(mapping, 2 * page) }
    #expect(mprotect(mapping + page, page, PROT_NONE) == 0)
    let bytes = UnsafeMutableRawBufferPointer(start: mapping, count: page)
    let map = try ArenaHashMap<[UInt8], UInt64>.format(bytes, bucketCount: 16)
    map[[UInt8](repeating: 7, count: 20)] = 5
    // The one entry sits at the heap's start; forge a slot that leads a
    // 4000-byte key to it, and a key length of 4000 in the entry.
    let entry = (ArenaHashMap<[UInt8], UInt64>.headerSize + 16 * 8 + 63) & ~63
    let long = [UInt8](repeating: 7, count: 4000)
    let h = long.withUnsafeBytes { map.hash($0) }
    let hash32 = UInt32(truncatingIfNeeded: h)
    let slots = ArenaHashMap<[UInt8], UInt64>.headerSize
    for i in 0..<16 {
      bytes.storeBytes(of: UInt64(0), toByteOffset: slots + i * 8, as: UInt64.self)
    }
    bytes.storeBytes(
      of: UInt64(hash32) << 32 | UInt64(entry >> 6),
      toByteOffset: slots + Int(hash32 & 15) * 8, as: UInt64.self)
    bytes.storeBytes(of: UInt16(4000), toByteOffset: entry + 28, as: UInt16.self)
    #expect(map[long] == nil)
    #expect(throws: ArenaHashMap<[UInt8], UInt64>.SetError.tooLarge(70_000)) {
      try map.set([UInt8](repeating: 1, count: 70_000), 1)
    }
  }

  /// Damages random bytes past the header of a filled map, then uses it:
  /// no crash, no hang, and every value read back is one that was stored.
  @Test(arguments: 0..<40) func survivesRandomDamageAndReturnsOnlyStoredValues(seed: UInt64)
    throws
  {
    var random = SplitMix(state: seed)
    let memory = TestRegion(1 << 15)
    let map = try ArenaHashMap<String, String>.format(memory.bytes, bucketCount: 64)
    var stored: [String: String] = [:]
    for i in 0..<300 {
      let key = "key-\(i)"
      let value = String(repeating: "v\(i)", count: Int(random.next() % 8) + 1)
      map[key] = value
      stored[key] = value
    }
    let heapStart = ArenaHashMap<String, String>.headerSize
    for _ in 0..<(1 + random.next() % 64) {
      let at = heapStart + Int(random.next() % UInt64(memory.bytes.count - heapStart))
      memory.bytes[at] = UInt8(truncatingIfNeeded: random.next())
    }
    let attached = try ArenaHashMap<String, String>.attach(memory.bytes)
    for (key, value) in stored {
      if let found = attached[key] { #expect(found == value) }
    }
    for (key, value) in attached { #expect(stored[key] == value) }
    #expect(attached.count <= 300)
    for i in 300..<600 { attached["key-\(i)"] = "new \(i)" }
    for i in 300..<600 {
      if let found = attached["key-\(i)"] { #expect(found == "new \(i)") }
    }
  }
}

extension ArenaHashMapTests {
  /// Damages random bytes anywhere, header included: attach refuses or the
  /// map works on, never crashing, never returning what was not stored.
  @Test(arguments: 0..<60) func survivesDamageToTheHeaderToo(seed: UInt64) throws {
    var random = SplitMix(state: seed &+ 1000)
    let memory = TestRegion(1 << 14)
    let map = try ArenaHashMap<UInt64, UInt64>.format(memory.bytes, bucketCount: 32)
    for i in 0..<100 { map[UInt64(i)] = UInt64(i) * 11 }
    for _ in 0..<(1 + random.next() % 8) {
      let at = Int(random.next() % UInt64(ArenaHashMap<UInt64, UInt64>.headerSize + 512))
      memory.bytes[at] = UInt8(truncatingIfNeeded: random.next())
    }
    guard let attached = try? ArenaHashMap<UInt64, UInt64>.attach(memory.bytes) else { return }
    for i in 0..<100 {
      if let value = attached[UInt64(i)] { #expect(value == UInt64(i) * 11) }
    }
    for i in 100..<400 { attached[UInt64(i)] = UInt64(i) * 11 }
    attached.removeValue(forKey: 5)
    for (key, value) in attached { #expect(value == key * 11) }
    try? attached.rehash(bucketCount: 64)
    for i in 0..<400 {
      if let value = attached[UInt64(i)] { #expect(value == UInt64(i) * 11) }
    }
  }

  /// Damages a small map's slots, entries and LRU while it evicts at its
  /// memory bound, doubles its table and removes: no crash, no hang, and
  /// every value read is one that was stored for that key.
  @Test(arguments: 0..<100) func survivesDamageWhileEvictingGrowingAndRemoving(seed: UInt64)
    throws
  {
    var random = SplitMix(state: seed &+ 5000)
    let memory = TestRegion(1 << 13)
    let map = try ArenaHashMap<UInt64, [UInt8]>.format(memory.bytes, bucketCount: 4)
    func value(_ key: UInt64) -> [UInt8] {
      Array(repeating: UInt8(truncatingIfNeeded: key), count: Int(key % 90))
    }
    for round in 0..<20 {
      for _ in 0..<40 {
        let key = random.next() % 200
        switch random.next() % 4 {
        case 0: map.removeValue(forKey: key)
        case 1: if let found = map[key] { #expect(found == value(key)) }
        default: try? map.set(key, value(key))
        }
      }
      if round % 4 == 3 {
        for _ in 0..<(1 + random.next() % 16) {
          let at =
            ArenaHashMap<UInt64, [UInt8]>.headerSize
            + Int(
              random.next() % UInt64(memory.bytes.count - ArenaHashMap<UInt64, [UInt8]>.headerSize))
          memory.bytes[at] = UInt8(truncatingIfNeeded: random.next())
        }
      }
    }
    for (key, found) in map { #expect(found == value(key)) }
    #expect(map.count <= map.bucketCount)
  }
}
