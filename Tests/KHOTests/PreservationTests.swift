import FDT
import Testing

@testable import KHO

#if canImport(Glibc)
  import Glibc
#endif

/// The stateless root: every preserve, unpreserve and sub-blob is in the
/// arena at once, and a second KHO booted from a duplicate of the arena fd
/// (as after a crash, from a keeper) finds exactly the last description.
@Suite struct PreservationTests {
  let options = KHOOptions(arenaSize: 16 << 20, scratchSize: 1 << 20)

  /// The arena as a crashed image would leave it to its keeper.
  func crash(_ kho: KHO) throws -> KHO {
    try KHO.boot(
      options, handover: nil, crashed: FileDescriptor(rawValue: dup(kho.arena.fd.rawValue)))
  }

  func read(_ kho: KHO) throws -> PreservationRoot.Description {
    try PreservationRoot.read(
      UnsafeRawBufferPointer(start: kho.arena.base, count: Int(kho.arena.size)),
      pageSize: kho.arena.pageSize.bytes)
  }

  @Test func aCrashBootFindsWhatWasPreservedAndNamed() throws {
    let old = try KHO.boot(options, handover: nil)
    let preservation = try #require(old.preservation)
    let region = try old.allocator.allocate(bytes: 3 * 4096)
    (old.arena.base + Int(region.lowerBound)).initializeMemory(
      as: UInt8.self, repeating: 0x5a, count: region.count)
    try preservation.preserve(region)
    try preservation.addSubtree("store", at: region.lowerBound..<region.lowerBound + 100)

    let new = try crash(old)
    let incoming = try #require(new.incoming)
    #expect(incoming.kind == .crash)
    #expect(
      incoming.memCache.ranges == [KHOMemoryRange(address: region.lowerBound, length: 3 * 4096)])
    #expect(
      incoming.retrieveSubtree("store") == KHOMemoryRange(address: region.lowerBound, length: 100))
    #expect(incoming.retrieveSubtree("other") == nil)
    #expect(incoming.tree.root.property("compatible")?.string == "kho-v4")
    let bytes = try incoming.claim(KHOMemoryRange(address: region.lowerBound, length: 3 * 4096))
    #expect(bytes.allSatisfy { $0 == 0x5a })
    // The new image's scratch and allocations stay clear of what it keeps.
    #expect(!new.scratch.overlaps(region))
    let fresh = try new.allocator.allocate(bytes: 4096)
    #expect(!fresh.overlaps(region))
  }

  @Test func everyChangeTakesEffectAtOnce() throws {
    let kho = try KHO.boot(options, handover: nil)
    let preservation = try #require(kho.preservation)
    let a = try kho.allocator.allocate(bytes: 8192)
    let b = try kho.allocator.allocate(bytes: 4096)
    try preservation.preserve(a)
    #expect(try read(kho).ranges.map { $0.address..<$0.end } == [a])
    try preservation.preserve(b)
    try preservation.addSubtree("b", at: b)
    #expect(try read(kho).ranges.map { $0.address..<$0.end } == PreservationTests.merged([a, b]))
    #expect(try read(kho).tree.root.child(named: "b") != nil)
    try preservation.removeSubtree("b")
    #expect(try read(kho).tree.root.child(named: "b") == nil)
    // Unpreserving takes the sub-blobs inside with it.
    try preservation.addSubtree("a", at: a)
    try preservation.unpreserve(a)
    let after = try read(kho)
    #expect(after.ranges.map { $0.address..<$0.end } == [b])
    #expect(after.tree.root.children.isEmpty)
    #expect(after.sequence == preservation.sequence)
  }

  static func merged(_ ranges: [Range<UInt64>]) -> [Range<UInt64>] {
    ranges.sorted { $0.lowerBound < $1.lowerBound }.reduce(into: []) { out, r in
      if let last = out.last, last.upperBound == r.lowerBound {
        out[out.count - 1] = last.lowerBound..<r.upperBound
      } else {
        out.append(r)
      }
    }
  }

  /// A write torn at any byte (the process killed mid-update) leaves the
  /// previous description, never a mix.
  @Test func aTornUpdateLeavesThePreviousDescription() throws {
    let kho = try KHO.boot(options, handover: nil)
    let preservation = try #require(kho.preservation)
    let a = try kho.allocator.allocate(bytes: 4096)
    try preservation.preserve(a)
    let before = try read(kho)
    let b = try kho.allocator.allocate(bytes: 4096)
    try preservation.preserve(b)
    // Damage the newest slot anywhere: header, FDT or map.
    let root = PreservationRoot.range(arenaSize: kho.arena.size)!
    let newestSlot = Int(root.lowerBound) + Int(preservation.sequence % 2) * (1 << 20)
    for offset in [0, 16, 40, 56, 64, 70, 100, 200] {
      let byte = kho.arena.base + newestSlot + offset
      let saved = byte.load(as: UInt8.self)
      byte.storeBytes(of: saved ^ 0x40, as: UInt8.self)
      let seen = try read(kho)
      #expect(seen.sequence == before.sequence, "offset \(offset)")
      #expect(seen.ranges == before.ranges, "offset \(offset)")
      byte.storeBytes(of: saved, as: UInt8.self)
    }
    #expect(try read(kho).sequence == before.sequence + 1)
  }

  /// Random damage to the whole root: the reader refuses or returns a
  /// description it validated; it never traps, whatever the bytes.
  @Test func damageIsRefusedNeverTrusted() throws {
    let kho = try KHO.boot(options, handover: nil)
    let preservation = try #require(kho.preservation)
    let a = try kho.allocator.allocate(bytes: 4096)
    try preservation.preserve(a)
    try preservation.addSubtree("a", at: a)
    let root = PreservationRoot.range(arenaSize: kho.arena.size)!
    var rng = SplitMix64(seed: 7)
    for _ in 0..<2000 {
      let at = Int(root.lowerBound) + Int(rng.next() % 4096) + Int(rng.next() % 2) * (1 << 20)
      (kho.arena.base + at).storeBytes(of: UInt8(truncatingIfNeeded: rng.next()), as: UInt8.self)
      if let seen = try? read(kho) {
        for range in seen.ranges {
          #expect(range.end <= root.lowerBound)
          #expect(range.address % 4096 == 0 && range.length % 4096 == 0)
        }
      }
    }
    // A crash boot from an arena whose root is gone starts cold.
    for slot in 0..<2 {
      (kho.arena.base + Int(root.lowerBound) + slot * (1 << 20)).storeBytes(
        of: UInt64(0xdead), as: UInt64.self)
    }
    let new = try crash(kho)
    #expect(new.incoming == nil)
    #expect(new.coldStartReason != nil)
  }

  @Test func refusesWhatCannotBePreserved() throws {
    let kho = try KHO.boot(options, handover: nil)
    let preservation = try #require(kho.preservation)
    let root = PreservationRoot.range(arenaSize: kho.arena.size)!
    #expect(throws: PreservationError.badRange(root)) { try preservation.preserve(root) }
    #expect(throws: PreservationError.badRange(kho.scratch)) {
      try preservation.preserve(kho.scratch)
    }
    #expect(throws: PreservationError.self) { try preservation.preserve(0..<0) }
    #expect(throws: PreservationError.self) {
      try preservation.preserve((UInt64.max - 10)..<UInt64.max)
    }
    let a = try kho.allocator.allocate(bytes: 4096)
    #expect(throws: PreservationError.notPreserved(name: "a", a)) {
      try preservation.addSubtree("a", at: a)
    }
    try preservation.preserve(a)
    #expect(throws: PreservationError.badName("a/b")) { try preservation.addSubtree("a/b", at: a) }
    #expect(throws: PreservationError.badName("")) { try preservation.addSubtree("", at: a) }
    // A refused change publishes nothing.
    let sequence = preservation.sequence
    #expect(throws: PreservationError.self) { try preservation.addSubtree("x", at: root) }
    #expect(preservation.sequence == sequence)
  }

  /// After a handover the next image continues the numbering, and the
  /// previous description stays valid until it publishes its own.
  @Test func aHandoverBootKeepsTheDescriptionUntilItPublishes() throws {
    let old = try KHO.boot(options, handover: nil)
    let a = try old.allocator.allocate(bytes: 4096)
    try old.preservation!.preserve(a)
    try old.outgoing.register(
      KHONotifier(
        name: "a",
        dump: { writer in
          try writer.beginNode("a")
          try writer.property("mem", native: [a.lowerBound, UInt64(a.count)])
          try writer.endNode()
        }))
    try old.outgoing.serialize()
    var location = try old.load()
    location.fd = dup(location.fd)
    let new = try KHO.boot(options, handover: .success(location))
    #expect(new.incoming?.kind == .handover)
    let preservation = try #require(new.preservation)
    #expect(preservation.sequence == 1)
    #expect(try read(new).ranges.map { $0.address..<$0.end } == [a])
    try preservation.preserve(a)
    #expect(try read(new).sequence == 2)
  }
}

/// A small deterministic generator for damage tests.
struct SplitMix64 {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9e37_79b9_7f4a_7c15
    var z = state
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    return z ^ (z >> 31)
  }
}
