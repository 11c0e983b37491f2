// A damaged region must never crash, hang or mislead the store that attaches
// it: each case below damages a formatted, populated, frozen region, then
// attaches it (refusing is fine: the caller starts cold) and, if that
// worked, reads every key, overwrites, deletes and fills past capacity,
// checking every value against a model of what was stored.
//
// No timers: a hang is impossible by construction (every walk is bounded),
// so a test that hangs is a failing test.

import Synchronization
import Testing

@testable import KHOCacheStore

#if canImport(Glibc)
  import Glibc
#endif

/// SplitMix64: a small deterministic generator, so that every run damages
/// the same bytes.
struct SplitMix64 {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
  mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

/// A populated, frozen region, kept as bytes so that each case damages a
/// fresh copy of exactly the same state.
final class DamageFixture {
  static let size = 4 << 20
  static let itemSizeMax = 64 << 10
  let memory = SharedMemory(size: size)
  let region: CacheRegion
  let clock = ManualClock()
  /// What was stored, by key, when the region was frozen.
  private(set) var model: [String: [UInt8]] = [:]
  /// Where each item of `model` starts in the region.
  private(set) var offsets: [String: Int] = [:]
  private var pristine: [UInt8] = []
  private var sortedKeys: [String] = []
  /// The values the exercise fills the store with past its capacity.
  let largeValues = (0..<220).map { DamageFixture.value(seed: UInt64($0), length: 20_000) }
  let smallValues = (0..<3000).map { DamageFixture.value(seed: UInt64($0), length: 150) }

  init() throws {
    region = memory.map()
    let store = try CacheStore.format(
      region: region, itemSizeMax: Self.itemSizeMax, clock: clock.source)
    var random = SplitMix64(seed: 7)
    for index in 0..<1500 {
      let length = [5, 40, 100, 300, 1000, 3000][index % 6] + random.below(50)
      let key = "key-\(index)"
      let value = Self.value(seed: UInt64(index), length: length)
      // A third with a TTL, so that a clock from the future would kill them.
      try store.set(key, value: value, exptime: index % 3 == 0 ? 3600 : 0)
      model[key] = value
    }
    for index in stride(from: 0, to: 1500, by: 7) {
      _ = try store.delete("key-\(index)")
      model["key-\(index)"] = nil
    }
    for key in model.keys {
      offsets[key] = store.itemOffset(key, in: region)!
    }
    sortedKeys = model.keys.sorted()
    store.freeze()
    pristine = Array(UnsafeRawBufferPointer(start: region.base, count: Self.size))
  }

  /// Puts the frozen bytes back.
  func restore() {
    pristine.withUnsafeBytes { region.base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
  }

  static func value(seed: UInt64, length: Int) -> [UInt8] {
    var random = SplitMix64(seed: seed &* 31 &+ UInt64(length))
    return (0..<length).map { _ in UInt8(truncatingIfNeeded: random.next()) }
  }

  // MARK: Reading the layout (for aiming damage)

  func u64(_ offset: Int) -> UInt64 { region.base.load(fromByteOffset: offset, as: UInt64.self) }
  func u8(_ offset: Int) -> UInt8 { region.base.load(fromByteOffset: offset, as: UInt8.self) }
  var slabOffset: Int { Int(u64(Header.slabOffset)) }
  var pageSize: Int { Int(u64(Header.pageSize)) }
  var pageTableOffset: Int { Int(u64(Header.pageTableOffset)) }
  var pagesUsed: Int { Int(u64(Header.pagesUsed)) }
  func bucket(of key: String) -> Int {
    let hash = Array(key.utf8).withUnsafeBytes { keyHash($0) }
    return Int(u64(Header.hashOffset)) + Int(hash & UInt32(u64(Header.bucketCount) - 1)) * 8
  }
  func classEntry(_ classId: Int) -> Int { Header.classTable + (classId - 1) * ClassField.size }
  func classOf(_ item: Int) -> Int { Int(u8(item + ItemField.classId)) }
  /// The class whose chunks hold `total` bytes (header + key + value).
  func classFor(total: Int) -> Int {
    var classId = 1
    while Int(u64(classEntry(classId) + ClassField.chunkSize)) < total { classId += 1 }
    return classId
  }
  /// A key the fixture never stored whose bucket is `key`'s: a miss for it
  /// walks `key`'s whole chain.
  func absentKey(sharingBucketWith key: String) -> String {
    var index = 0
    while bucket(of: "probe-\(index)") != bucket(of: key) { index += 1 }
    return "probe-\(index)"
  }
  /// The item of `model`'s `index`-th key (in sorted order, so deterministic).
  func item(_ index: Int) -> (key: String, offset: Int) {
    let key = sortedKeys[index % sortedKeys.count]
    return (key, offsets[key]!)
  }
}

/// Writes damage into a region and remembers which bytes it changed.
struct Damager {
  let base: UnsafeMutableRawPointer
  var ranges: [Range<Int>] = []

  mutating func u64(_ offset: Int, _ value: UInt64) {
    base.storeBytes(of: value, toByteOffset: offset, as: UInt64.self)
    ranges.append(offset..<offset + 8)
  }
  mutating func u32(_ offset: Int, _ value: UInt32) {
    base.storeBytes(of: value, toByteOffset: offset, as: UInt32.self)
    ranges.append(offset..<offset + 4)
  }
  mutating func u8(_ offset: Int, _ value: UInt8) {
    base.storeBytes(of: value, toByteOffset: offset, as: UInt8.self)
    ranges.append(offset..<offset + 1)
  }
  func touches(_ range: Range<Int>) -> Bool { ranges.contains { $0.overlaps(range) } }
}

extension CacheStore {
  /// Where the item for `key` starts in `region`, nil on a miss.
  func itemOffset(_ key: String, in region: CacheRegion) -> Int? {
    Array(key.utf8).withUnsafeBytes { key in
      get(key) { view in
        view.key.baseAddress! - UnsafeRawPointer(region.base) - ItemField.headerSize
      }
    }
  }
}

/// What happened to one damaged region.
struct DamageOutcome {
  var refused: CacheRegionError?
  var damaged: UInt64 = 0
}

/// Attaches the damaged region and runs every kind of operation on it,
/// checking each value read against the model.
func exercise(
  _ fixture: DamageFixture, _ damage: Damager, seed: UInt64, probes: [String] = []
) throws -> DamageOutcome {
  let reports = Mutex<Int>(0)
  let store: CacheStore
  do {
    store = try CacheStore.attach(
      region: fixture.region, clock: fixture.clock.source,
      damageHandler: { _ in reports.withLock { $0 += 1 } })
  } catch {
    return DamageOutcome(refused: error)
  }
  var model = fixture.model
  var fresh: Set<String> = []
  let base = UnsafeRawPointer(fixture.region.base)

  /// A hit must be the value stored. For a key not stored again since the
  /// damage, the one exception is damage inside that item's own bytes
  /// (its lengths, key or value: the format has no per-item checksum);
  /// even then, the bytes returned lie inside the region.
  func verify(_ key: String) {
    let seen: (value: [UInt8], range: Range<Int>)? = Array(key.utf8).withUnsafeBytes { raw in
      store.get(raw) { view in
        let start = view.value.baseAddress.map { $0 - base } ?? 0
        return (Array(view.value), start..<start + view.value.count)
      }
    }
    guard let seen else { return }
    guard let expected = model[key] else {
      Issue.record("\(key): a value for a key that is not stored")
      return
    }
    if seen.value == expected { return }
    let original = fixture.offsets[key].map {
      $0..<$0 + ItemField.headerSize + key.utf8.count + expected.count
    }
    let inPlace =
      !fresh.contains(key)
      && original.map { damage.touches($0) || damage.touches(seen.range) } == true
    #expect(inPlace, "\(key): \(seen.value.count) bytes instead of the \(expected.count) stored")
    #expect(seen.range.lowerBound >= 0 && seen.range.upperBound <= DamageFixture.size)
  }

  func set(_ key: String, _ value: [UInt8]) {
    do throws(CacheOperationError) {
      let result = try store.set(key, value: value)
      #expect(result == .stored)
      model[key] = value
      fresh.insert(key)
      #expect(store.get(key)?.value == value, "\(key): a value just stored must be read back")
    } catch .outOfMemory {
      // A set that fails drops the old value, as memcached does.
      model[key] = nil
    } catch {
      Issue.record("\(key): \(error)")
    }
  }

  // Past the LRU bump interval: every hit now moves its item in its LRU.
  fixture.clock.advance(seconds: 61)
  let keys = fixture.model.keys.sorted()
  for key in keys { verify(key) }
  // Misses walk whole chains, nearly every bucket's.
  for index in 0..<2000 { verify("absent-\(index)") }
  for key in probes { verify(key) }
  var random = SplitMix64(seed: seed)
  for key in keys where random.below(5) == 0 {
    set(key, DamageFixture.value(seed: random.next(), length: fixture.model[key]!.count))
  }
  for key in keys where random.below(10) == 0 {
    _ = try store.delete(key)
    model[key] = nil
    fresh.insert(key)
  }
  for key in keys { verify(key) }
  // Past capacity: large values, then small ones, forcing eviction and
  // pages to move between classes.
  for (index, value) in fixture.largeValues.enumerated() { set("large-\(index)", value) }
  for (index, value) in fixture.smallValues.enumerated() { set("small-\(index)", value) }
  for key in model.keys.sorted() { verify(key) }
  _ = try store.arithmetic("counter", increment: true, delta: 1)
  let damaged = store.stats()["damaged"]
  #expect(reports.withLock { $0 } == Int(damaged), "every damage counted is reported")
  return DamageOutcome(damaged: damaged)
}

/// Ways to damage the populated region, each aimed at one structure.
enum AimedDamage: String, CaseIterable, Sendable {
  case bucketHeadOutsideRegion, bucketHeadMisaligned, bucketHeadInHeader, bucketHeadInHashIndex
  case bucketHeadIntoItem, bucketHeadAtFreeChunk, bucketHeadAtItemOfOtherBucket
  case selfReferencingChain, cyclicChain
  case hugeValueLength, valueLengthJustPastChunk, keyLengthZero, keyLengthTooLong
  case classId200, classIdOfAnotherClass, flagsCleared, flagsGarbage
  case lruPrevAnywhere, lruNextAnywhere, lruNextIntoHeader, lruSelf, lruTailNotATail
  case freeHeadAtLiveItem, freeHeadMisaligned, freeLinkAtLiveItem, freeLinkOutside, freeLinkSelf
  case pagesSwapped, clockFarFuture, clockNanosecondsFarFuture, casCounterBehind

  /// Harmless enough that the store need not notice: a tail anchor at
  /// another sound item of the class, or a bucket head at a sound item of
  /// another bucket (that bucket's items are lost, misses; nothing wrong is
  /// read or written). Everything else must be found while exercising.
  var mayGoUnnoticed: Bool { [.lruTailNotATail, .bucketHeadAtItemOfOtherBucket].contains(self) }

  /// Refused by attach, necessarily (a header word that cannot be right).
  var mustRefuse: Bool {
    [.clockFarFuture, .clockNanosecondsFarFuture, .casCounterBehind].contains(self)
  }

  func apply(_ fixture: DamageFixture, _ damage: inout Damager) {
    let (key, item) = fixture.item(11)
    let (otherKey, other) = fixture.item(977)
    let bucket = fixture.bucket(of: key)
    let head = Int(fixture.u64(bucket))
    let classId = fixture.classOf(item)
    let entry = fixture.classEntry(classId)
    let freeHead = Int(fixture.u64(entry + ClassField.freeHead))
    // The free list of the class the exercise's small fill uses most.
    let fillEntry = fixture.classEntry(
      fixture.classFor(total: ItemField.headerSize + "small-1000".utf8.count + 150))
    let fillFreeHead = Int(fixture.u64(fillEntry + ClassField.freeHead))
    switch self {
    case .bucketHeadOutsideRegion: damage.u64(bucket, UInt64(DamageFixture.size + 4096))
    case .bucketHeadMisaligned: damage.u64(bucket, UInt64(head + 3))
    case .bucketHeadInHeader: damage.u64(bucket, 64)
    case .bucketHeadInHashIndex: damage.u64(bucket, UInt64(bucket))
    case .bucketHeadIntoItem: damage.u64(bucket, UInt64(item + ItemField.headerSize))
    case .bucketHeadAtFreeChunk: damage.u64(bucket, UInt64(freeHead))
    case .bucketHeadAtItemOfOtherBucket:
      precondition(fixture.bucket(of: otherKey) != bucket)
      damage.u64(bucket, UInt64(other))
    case .selfReferencingChain: damage.u64(item + ItemField.hashNext, UInt64(item))
    case .cyclicChain: damage.u64(item + ItemField.hashNext, UInt64(head))
    case .hugeValueLength: damage.u32(item + ItemField.valueLength, 16 << 20)
    case .valueLengthJustPastChunk:
      let chunk = Int(fixture.u64(entry + ClassField.chunkSize))
      damage.u32(
        item + ItemField.valueLength, UInt32(chunk - ItemField.headerSize - key.utf8.count + 1))
    case .keyLengthZero: damage.u8(item + ItemField.keyLength, 0)
    case .keyLengthTooLong: damage.u8(item + ItemField.keyLength, 251)
    case .classId200: damage.u8(item + ItemField.classId, 200)
    case .classIdOfAnotherClass: damage.u8(item + ItemField.classId, UInt8(classId + 1))
    case .flagsCleared: damage.u8(item + ItemField.itemFlags, 0)
    case .flagsGarbage: damage.u8(item + ItemField.itemFlags, 0xFF)
    case .lruPrevAnywhere:
      damage.u64(item + ItemField.lruPrev, UInt64(fixture.slabOffset + 12_345 * 8))
    case .lruNextAnywhere: damage.u64(item + ItemField.lruNext, UInt64(other))
    case .lruNextIntoHeader: damage.u64(item + ItemField.lruNext, UInt64(Header.stats))
    case .lruSelf:
      damage.u64(item + ItemField.lruPrev, UInt64(item))
      damage.u64(item + ItemField.lruNext, UInt64(item))
    case .lruTailNotATail:
      // The tail anchor at a sound item of the class that is not the tail.
      damage.u64(entry + ClassField.lruTail, UInt64(item))
    case .freeHeadAtLiveItem: damage.u64(entry + ClassField.freeHead, UInt64(item))
    case .freeHeadMisaligned: damage.u64(entry + ClassField.freeHead, UInt64(freeHead + 8))
    case .freeLinkAtLiveItem: damage.u64(fillFreeHead + ItemField.hashNext, UInt64(item))
    case .freeLinkOutside: damage.u64(fillFreeHead + ItemField.hashNext, UInt64.max - 7)
    case .freeLinkSelf: damage.u64(fillFreeHead + ItemField.hashNext, UInt64(fillFreeHead))
    case .pagesSwapped:
      // Two pages of different classes trade class bytes: the page counts
      // still agree, so attach accepts it; every item on them must vanish.
      let table = fixture.pageTableOffset
      let first = fixture.u8(table)
      let second = (1..<fixture.pagesUsed).first { fixture.u8(table + $0) != first }!
      let secondClass = fixture.u8(table + second)
      damage.u8(table, secondClass)
      damage.u8(table + second, first)
    case .clockFarFuture: damage.u64(Header.clock, 1 << 40)
    case .clockNanosecondsFarFuture: damage.u64(Header.clockNanoseconds, 1 << 62)
    case .casCounterBehind: damage.u64(Header.casCounter, 1)
    }
  }
}

@Suite struct DamageTests {
  @Test(arguments: AimedDamage.allCases)
  func aimedDamage(_ kind: AimedDamage) throws {
    let fixture = try DamageFixture()
    var damage = Damager(base: fixture.region.base)
    kind.apply(fixture, &damage)
    let probe = fixture.absentKey(sharingBucketWith: fixture.item(11).key)
    let outcome = try exercise(fixture, damage, seed: 3, probes: [probe])
    if kind.mustRefuse {
      #expect(outcome.refused != nil, "\(kind) must be refused at attach")
    } else if !kind.mayGoUnnoticed {
      #expect(outcome.refused != nil || outcome.damaged > 0, "\(kind) went unnoticed")
    }
  }

  /// Random words at random places, many times over: anywhere after the
  /// geometry checksum, with values chosen to look like offsets often.
  @Test func randomWords() throws {
    let fixture = try DamageFixture()
    var random = SplitMix64(seed: 2026)
    var refused = 0
    var damaged = 0
    for iteration in 0..<100 {
      fixture.restore()
      var damage = Damager(base: fixture.region.base)
      for _ in 0..<(1 + random.below(6)) {
        // Mostly the index and the slab pages; sometimes the mutable header.
        let offset =
          random.below(8) == 0
          ? Header.state + random.below(Header.size - Header.state)
          : Header.size + random.below(DamageFixture.size - Header.size - 8)
        let aligned = offset & ~7
        damage.u64(aligned, word(&random, at: aligned, fixture))
      }
      let outcome = try exercise(fixture, damage, seed: UInt64(iteration))
      if outcome.refused != nil { refused += 1 }
      if outcome.damaged > 0 { damaged += 1 }
    }
    // The run must have reached both ends: refusals and damage survived.
    #expect(refused > 0 && damaged > 0)
  }

  /// Random values in the fields that hold offsets and lengths: item
  /// headers (links, lengths, class id, flags), bucket heads, and the
  /// class table's anchors, many times over.
  @Test func randomFields() throws {
    let fixture = try DamageFixture()
    var random = SplitMix64(seed: 10)
    var damaged = 0
    for iteration in 0..<100 {
      fixture.restore()
      var damage = Damager(base: fixture.region.base)
      for _ in 0..<(1 + random.below(4)) {
        let (key, item) = fixture.item(random.below(1000))
        let value = word(&random, at: item, fixture)
        switch random.below(9) {
        case 0: damage.u64(item + ItemField.hashNext, value)
        case 1: damage.u64(item + ItemField.lruPrev, value)
        case 2: damage.u64(item + ItemField.lruNext, value)
        case 3: damage.u32(item + ItemField.valueLength, UInt32(truncatingIfNeeded: value))
        case 4: damage.u8(item + ItemField.keyLength, UInt8(truncatingIfNeeded: value))
        case 5: damage.u8(item + ItemField.classId, UInt8(truncatingIfNeeded: value))
        case 6: damage.u8(item + ItemField.itemFlags, UInt8(truncatingIfNeeded: value))
        case 7: damage.u64(fixture.bucket(of: key), value)
        default:
          let entry = fixture.classEntry(1 + random.below(Int(fixture.u64(Header.classCount))))
          let field = [ClassField.freeHead, ClassField.lruHead, ClassField.lruTail][random.below(3)]
          damage.u64(entry + field, value)
        }
      }
      let outcome = try exercise(fixture, damage, seed: UInt64(iteration))
      if outcome.damaged > 0 { damaged += 1 }
    }
    #expect(damaged > 50, "\(damaged) of 100 damaged regions noticed")
  }

  private func word(_ random: inout SplitMix64, at offset: Int, _ fixture: DamageFixture) -> UInt64
  {
    switch random.below(7) {
    case 0: return random.next()
    case 1: return UInt64(random.below(DamageFixture.size)) & ~7
    case 2: return UInt64(offset)
    case 3: return 0
    case 4: return UInt64(fixture.item(random.below(1000)).offset)
    case 5: return UInt64(fixture.item(random.below(1000)).offset + 8 * random.below(4))
    default: return UInt64(1) << UInt64(random.below(64))
    }
  }

  @Test func damageIsCountedAndReported() throws {
    let fixture = try DamageFixture()
    var damage = Damager(base: fixture.region.base)
    AimedDamage.selfReferencingChain.apply(fixture, &damage)
    let messages = Mutex<[String]>([])
    let store = try CacheStore.attach(
      region: fixture.region, clock: fixture.clock.source,
      damageHandler: { message in messages.withLock { $0.append(message) } })
    _ = store.get(fixture.absentKey(sharingBucketWith: fixture.item(11).key))
    #expect(store.stats()["damaged"] == 1)
    #expect(messages.withLock { $0.count } == 1)
    #expect(messages.withLock { $0.first?.contains("loops") } == true)
  }

  @Test func aFrozenStoreReadsDamageWithoutWriting() throws {
    let fixture = try DamageFixture()
    var damage = Damager(base: fixture.region.base)
    AimedDamage.bucketHeadOutsideRegion.apply(fixture, &damage)
    let store = try CacheStore.attach(region: fixture.region, clock: fixture.clock.source)
    store.freeze()
    let bucket = fixture.bucket(of: fixture.item(11).key)
    let before = fixture.u64(bucket)
    #expect(store.get(fixture.item(11).key) == nil)
    #expect(fixture.u64(bucket) == before, "a frozen store writes nothing, not even a cut")
  }

  @Test func theNewCountersLiveInReservedHeaderSpace() {
    #expect(Header.statsEnd <= Header.clockEpochWallSeconds)
    #expect(CacheStats.names.contains("damaged") && CacheStats.names.contains("slabs_moved"))
  }
}

/// Format 2: every item carries a CRC-32C of its flags, lengths, key and
/// value, so damage inside the bytes of a value is found too.
@Suite struct ChecksumTests {
  let clock = ManualClock()

  @Test func aChangedValueByteIsNeverServed() throws {
    let memory = SharedMemory(size: 4 << 20)
    let region = memory.map()
    let store = try CacheStore.format(region: region, itemSizeMax: 64 << 10, clock: clock.source)
    let value = [UInt8](repeating: 0x61, count: 1000)
    try store.set("k", value: value)
    try store.set("other", value: [1, 2, 3])
    // Find the value's bytes in the region and flip one in the middle.
    let bytes = UnsafeMutableRawBufferPointer(start: region.base, count: region.size)
    let at = try #require(
      (0..<(bytes.count - 1000)).first { i in
        bytes[i] == 0x61 && bytes[i + 999] == 0x61 && bytes[i + 1000] != 0x61
      })
    bytes[at + 500] ^= 0x01
    #expect(store.get("k") == nil)
    #expect(store.stats()["damaged"] == 1)
    #expect(store.get("other")?.value == [1, 2, 3])
    // The damaged item is gone: storing the key again works as usual.
    try store.set("k", value: value)
    #expect(store.get("k")?.value == value)
  }

  @Test func incrementInPlaceKeepsTheChecksumTrue() throws {
    let memory = SharedMemory(size: 4 << 20)
    let store = try CacheStore.format(
      region: memory.map(), itemSizeMax: 64 << 10, clock: clock.source)
    try store.set("n", value: Array("100".utf8))
    #expect(try store.arithmetic("n", increment: false, delta: 1) == 99)
    #expect(store.get("n")?.value == Array("99 ".utf8))
    #expect(store.stats()["damaged"] == 0)
  }
}
