import FDT
import Testing

@testable import KHO

#if canImport(Glibc)
  import Glibc
#endif

/// The incoming side in one process: a cold KHO serializes and loads, and a
/// second KHO boots from a duplicate of its arena fd, as the next image would
/// from the inherited one.
@Suite struct IncomingTests {
  let options = KHOOptions(arenaSize: 64 << 20, scratchSize: 1 << 20)

  /// Boots cold, preserves `ranges` (allocated and filled), hands over.
  func handOver(preserving sizes: [UInt64]) throws -> (KHO, KHO, [Range<UInt64>]) {
    let old = try KHO.boot(options, handover: nil)
    var ranges: [Range<UInt64>] = []
    for (i, size) in sizes.enumerated() {
      let r = try old.allocator.allocate(bytes: size)
      (old.arena.base + Int(r.lowerBound)).initializeMemory(
        as: UInt8.self, repeating: UInt8(i + 1), count: Int(size))
      ranges.append(r)
    }
    let preserved = ranges
    try old.outgoing.register(
      KHONotifier(
        name: "test",
        dump: { writer in
          for (i, r) in preserved.enumerated() {
            try writer.beginNode("part\(i)")
            try writer.property("compatible", string: "test-part-v1")
            try writer.property("mem", native: [r.lowerBound, r.upperBound - r.lowerBound])
            try writer.endNode()
          }
        }))
    try old.outgoing.serialize()
    var location = try old.load()
    location.fd = dup(location.fd)
    let new = try KHO.boot(options, handover: .success(location))
    return (old, new, ranges)
  }

  @Test func bootsFromTheHandoverAndSeesTheSameBytes() throws {
    let (old, new, ranges) = try handOver(preserving: [8192, 4096])
    #expect(new.isKHOBoot)
    #expect(new.generation == 1)
    #expect(new.scratch == old.scratch)
    let incoming = try #require(new.incoming)
    #expect(incoming.findNode(path: "/part1")?.property("compatible")?.string == "test-part-v1")
    let memory = try incoming.claim(KHOMemoryRange(address: ranges[1].lowerBound, length: 4096))
    #expect(memory.allSatisfy { $0 == 2 })
    #expect(new.attributes.attribute(KHOAttributes.Path.firmwareDT) != nil)
  }

  @Test func claimsEachPageOnceAndRefusesWhatIsNotPreserved() throws {
    let (_, new, ranges) = try handOver(preserving: [16384])
    let incoming = try #require(new.incoming)
    let r = ranges[0]
    _ = try incoming.claim(KHOMemoryRange(address: r.lowerBound, length: 4096))
    #expect(
      throws: ClaimError.alreadyClaimed(KHOMemoryRange(address: r.lowerBound + 100, length: 10))
    ) {
      try incoming.claim(KHOMemoryRange(address: r.lowerBound + 100, length: 10))
    }
    #expect(throws: ClaimError.self) {
      try incoming.claim(KHOMemoryRange(address: r.upperBound, length: 4096))
    }
    #expect(throws: ClaimError.self) {
      try incoming.claim(KHOMemoryRange(address: new.scratch.lowerBound, length: 1))
    }
    #expect(throws: ClaimError.self) {
      try incoming.claim(KHOMemoryRange(address: UInt64.max - 1, length: 2))
    }
    // Preserved memory is reserved: the allocator does not hand it out.
    #expect(!new.allocator.isFree(r))
  }

  @Test func finishBootReturnsWhatNobodyClaimed() throws {
    let (_, new, ranges) = try handOver(preserving: [16384])
    let incoming = try #require(new.incoming)
    let r = ranges[0]
    _ = try incoming.claim(KHOMemoryRange(address: r.lowerBound + 4096, length: 4096))
    let returned = new.finishBoot()
    // The claimed page splits the preserved range: what is around it returns.
    #expect(returned.contains(r.lowerBound..<r.lowerBound + 4096))
    #expect(returned.contains(r.lowerBound + 8192..<r.upperBound))
    #expect(new.allocator.isFree(r.lowerBound..<r.lowerBound + 4096))
    #expect(!new.allocator.isFree(r.lowerBound + 4096..<r.lowerBound + 8192))
    #expect(throws: ClaimError.bootFinished) {
      try incoming.claim(KHOMemoryRange(address: r.lowerBound, length: 1))
    }
    // Returning the claimed page frees it.
    try incoming.returnMemory(KHOMemoryRange(address: r.lowerBound + 4096, length: 4096))
    #expect(new.allocator.isFree(r.lowerBound + 4096..<r.lowerBound + 8192))
    #expect(throws: ClaimError.self) {
      try incoming.returnMemory(KHOMemoryRange(address: r.lowerBound + 4096, length: 4096))
    }
  }

  @Test func continuousHandoverKeepsScratchAndCountsGenerations() throws {
    let (_, second, _) = try handOver(preserving: [4096])
    second.finishBoot()
    try second.outgoing.serialize()
    var location = try second.load()
    location.fd = dup(location.fd)
    let third = try KHO.boot(options, handover: .success(location))
    #expect(third.generation == 2)
    #expect(third.scratch == second.scratch)
  }

  /// The variable parsed as the runtime parses it.
  func parse(_ value: String) -> Result<HandoverLocation, HandoverError> {
    Result { () throws(HandoverError) in try HandoverLocation(parsing: value) }
  }

  @Test func badVariableStartsColdWithTheReason() throws {
    let kho = try KHO.boot(options, handover: parse("v1,fd=0,size=0x4000000,record=0x0"))
    #expect(!kho.isKHOBoot)
    guard case .badArenaFD(let why) = kho.coldStartReason else {
      Issue.record("expected a bad arena fd, got \(String(describing: kho.coldStartReason))")
      return
    }
    #expect(why.contains("not a memfd"))
    let garbled = try KHO.boot(options, handover: parse("garbage"))
    #expect(
      garbled.coldStartReason == .badEnvironment("\"garbage\" does not start with the version v1"))
  }

  @Test func loadRefusesWhenInactiveOrScratchIsTooSmall() throws {
    let kho = try KHO.boot(KHOOptions(arenaSize: 16 << 20, scratchSize: 4096), handover: nil)
    #expect(throws: KHOLoadError.self) { try kho.load() }
    try kho.outgoing.register(
      KHONotifier(
        name: "big",
        dump: { writer in
          try writer.beginNode("big")
          try writer.property("filler", bytes: [UInt8](repeating: 7, count: 8192))
          try writer.endNode()
        }))
    try kho.outgoing.serialize()
    #expect {
      try kho.load()
    } throws: { error in
      guard case .handover(.scratchTooSmall) = error as? KHOLoadError else { return false }
      return true
    }
  }
}
