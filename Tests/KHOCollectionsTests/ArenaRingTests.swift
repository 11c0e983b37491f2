import Testing

@testable import KHOCollections

@Suite struct ArenaRingTests {
  @Test func keepsTheNewestRecordsOfAnyLengthInOrder() throws {
    let memory = TestRegion(4096)
    let ring = try ArenaRing.format(memory.bytes)
    for i in 0..<500 { try ring.append("record \(i) " + String(repeating: "x", count: i % 97)) }
    let records = ring.records(as: String.self)
    #expect(!records.isEmpty)
    #expect(records.last?.value.hasPrefix("record 499 ") == true)
    let sequences = records.map(\.sequence)
    #expect(sequences == Array(sequences.first!...499))
    for (sequence, value) in records {
      #expect(value == "record \(sequence) " + String(repeating: "x", count: Int(sequence) % 97))
    }
    #expect(throws: ArenaRing.AppendError.self) {
      try ring.append([UInt8](repeating: 0, count: ring.maxRecord + 1))
    }
  }

  @Test func attachesAtAnotherAddressAndGrowsByCopyingIntoABiggerRing() throws {
    let first = TestRegion(2048)
    let ring = try ArenaRing.format(first.bytes)
    for i in 0..<100 { try ring.append(UInt64(i)) }
    let kept = ring.records(as: UInt64.self)
    let moved = TestRegion(2048)
    moved.bytes.copyMemory(from: UnsafeRawBufferPointer(first.bytes))
    let attached = try ArenaRing.attach(moved.bytes)
    #expect(attached.records(as: UInt64.self).map(\.value) == kept.map(\.value))
    let bigger = TestRegion(1 << 16)
    let grown = try ArenaRing.format(bigger.bytes)
    for record in attached.records(as: UInt64.self) { try grown.append(record.value) }
    for i in 100..<1000 { try grown.append(UInt64(i)) }
    #expect(
      grown.records(as: UInt64.self).map(\.value) == kept.map(\.value)
        + (100..<1000).map { UInt64($0) })
  }

  @Test(arguments: 0..<40) func survivesRandomDamageAndReturnsOnlyAppendedRecords(seed: UInt64)
    throws
  {
    var random = SplitMix(state: seed)
    let memory = TestRegion(8192)
    let ring = try ArenaRing.format(memory.bytes)
    for i in 0..<400 {
      try ring.append("r\(i)-" + String(repeating: "y", count: Int(random.next() % 40)))
    }
    let before = Dictionary(
      uniqueKeysWithValues: ring.records(as: String.self).map { ($0.sequence, $0.value) })
    for _ in 0..<(1 + random.next() % 32) {
      let at =
        ArenaRing.headerSize
        + Int(random.next() % UInt64(memory.bytes.count - ArenaRing.headerSize))
      memory.bytes[at] = UInt8(truncatingIfNeeded: random.next())
    }
    let attached = try ArenaRing.attach(memory.bytes)
    for record in attached.records(as: String.self) {
      #expect(before[record.sequence] == record.value)
    }
    for i in 0..<200 { try attached.append("after \(i)") }
    let after = attached.records(as: String.self)
    #expect(after.last?.value == "after 199")
  }
}
