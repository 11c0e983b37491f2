// After a crash the store is attached unfrozen: each test leaves the region
// as a mutation cut short at one instruction would, then checks that every
// item whose write had completed is there, byte for byte, and that the
// rebuilt store is consistent and serves.

import Testing

@testable import KHOCacheStore

@Suite struct RecoveryTests {
  let clock = ManualClock()

  /// A populated store, not frozen (its owner "died"), and its model.
  func populated(_ memory: SharedMemory) throws -> (CacheStore, [String: [UInt8]]) {
    let store = try CacheStore.format(
      region: memory.map(), itemSizeMax: 64 << 10, clock: clock.source)
    var model: [String: [UInt8]] = [:]
    for i in 0..<2000 {
      let value = Array("value-\(i)-".utf8) + [UInt8](repeating: UInt8(i % 251), count: i % 700)
      try store.set("key-\(i)", value: value)
      model["key-\(i)"] = value
    }
    return (store, model)
  }

  func recover(_ memory: SharedMemory) throws -> CacheStore {
    try CacheStore.attach(region: memory.map(), clock: clock.source, requireFrozen: false)
  }

  func expectAll(_ store: CacheStore, _ model: [String: [UInt8]], except lost: Set<String> = [])
    throws
  {
    for (key, value) in model where !lost.contains(key) {
      #expect(store.get(key)?.value == value, "\(key)")
    }
    try store.checkConsistency()
    try store.set("after-recovery", value: [1, 2, 3])
    #expect(store.get("after-recovery")?.value == [1, 2, 3])
  }

  @Test func anUnfrozenStoreKeepsEveryItem() throws {
    let memory = SharedMemory(size: 8 << 20)
    let (store, model) = try populated(memory)
    _ = store
    let again = try recover(memory)
    #expect(again.stats()["curr_items"] == UInt64(model.count))
    try expectAll(again, model)
  }

  /// A frozen store (a handover that crashed after FREEZE) is taken as it
  /// is, with no rebuild.
  @Test func aFrozenStoreIsNotRebuilt() throws {
    let memory = SharedMemory(size: 8 << 20)
    let (store, model) = try populated(memory)
    store.freeze()
    try expectAll(try recover(memory), model)
  }

  /// Cut short in the middle of each step that changes shared structures.
  @Test(arguments: CrashPoint.allCases)
  func aMutationCutShort(at point: CrashPoint) throws {
    let memory = SharedMemory(size: 8 << 20)
    let (store, model) = try populated(memory)
    _ = store
    let region = memory.map()
    let m = RegionMemory(base: region.base, size: region.size)
    let geometry = try Geometry.read(from: m)
    let core = StoreCore(
      memory: m, geometry: geometry,
      clock: CacheClock(source: clock.source, resumingAtNanoseconds: 0),
      damageHandler: nil)
    var lost: Set<String> = []
    let victimKey = Array("key-7".utf8)
    let victim = victimKey.withUnsafeBytes { core.find($0, hash: keyHash($0)) }
    #expect(victim != 0)
    switch point {
    case .pageCountedNotAssigned:
      // grabPage: pagesUsed went up, the page table byte not yet written.
      m.setU64(Header.pagesUsed, m.u64(Header.pagesUsed) + 1)
    case .classPageCountStale:
      let entry = geometry.classEntry(core.classId(victim))
      m.setU64(entry + ClassField.pageCount, m.u64(entry + ClassField.pageCount) + 1)
    case .unlinkedFromChainNotFreed:
      // unlink: out of the hash chain, still flagged linked and in the LRU.
      core.hashRemove(victim)
      lost.insert("key-7")
    case .lruHalfRemoved:
      // lruRemove: the previous item already skips it, the next not yet.
      let prev = m.off(victim + ItemField.lruPrev)
      let next = m.off(victim + ItemField.lruNext)
      if prev != 0 { m.setOff(prev + ItemField.lruNext, next) }
    case .freeListPoppedNotLinked:
      // allocate: a chunk off the free list, filled, never linked.
      let classId = core.classId(victim)
      let chunk = core.popFree(classId)
      if chunk != 0 { m.setU8(chunk + ItemField.classId, UInt8(classId)) }
    case .countersStale:
      m.setU64(Header.stats + StatCounter.currItems.rawValue * 8, 12345)
      m.setU64(Header.stats + StatCounter.bytes.rawValue * 8, 1)
    case .incrementBeforeSeal:
      // arithmetic in place: new digits written, checksum not yet.
      let value = core.mutableValue(victim)
      value[0] = value[0] ^ 0x20
      lost.insert("key-7")
    }
    let again = try recover(memory)
    try expectAll(again, model, except: lost)
    for key in lost { #expect(again.get(key) == nil) }
  }
}

enum CrashPoint: CaseIterable, Sendable {
  case pageCountedNotAssigned, classPageCountStale, unlinkedFromChainNotFreed, lruHalfRemoved
  case freeListPoppedNotLinked, countersStale, incrementBeforeSeal
}
