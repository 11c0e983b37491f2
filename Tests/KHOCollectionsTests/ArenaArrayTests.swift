import Testing

@testable import KHOCollections

struct Point: BitwiseCopyable, Equatable {
  var x: Int32
  var y: Int32
}

@Suite struct ArenaArrayTests {
  @Test func growsUpToTheRegionsCapacity() throws {
    let memory = TestRegion(1024)
    let array = try ArenaArray<Point>.format(memory.bytes)
    for i in 0..<array.capacity { try array.append(Point(x: Int32(i), y: -Int32(i))) }
    #expect(throws: ArenaArray<Point>.AppendError.self) { try array.append(Point(x: 0, y: 0)) }
    #expect(Array(array) == (0..<array.capacity).map { Point(x: Int32($0), y: -Int32($0)) })
    array[3] = Point(x: 30, y: 30)
    #expect(array[3] == Point(x: 30, y: 30))
    #expect(array[array.capacity] == nil)
    #expect(
      array.removeLast() == Point(x: Int32(array.capacity - 1), y: -Int32(array.capacity - 1)))
  }

  @Test func attachesIntoABiggerRegionAsABiggerArray() throws {
    let small = TestRegion(512)
    let array = try ArenaArray<UInt64>.format(small.bytes)
    while (try? array.append(UInt64(array.count) * 7)) != nil {}
    let full = array.count
    let big = TestRegion(4096)
    big.bytes.copyMemory(from: UnsafeRawBufferPointer(small.bytes))
    let grown = try ArenaArray<UInt64>.attach(big.bytes)
    #expect(grown.capacity > full)
    for i in full..<grown.capacity { try grown.append(UInt64(i) * 7) }
    #expect(Array(grown) == (0..<grown.capacity).map { UInt64($0) * 7 })
    #expect(throws: ArenaAttachError.self) { try ArenaArray<UInt32>.attach(big.bytes) }
  }

  @Test(arguments: 0..<20) func dropsDamagedElementsAndNeverCrashes(seed: UInt64) throws {
    var random = SplitMix(state: seed)
    let memory = TestRegion(4096)
    let array = try ArenaArray<UInt64>.format(memory.bytes)
    for i in 0..<array.capacity { try array.append(UInt64(i) &* 0x1234_5678) }
    for _ in 0..<(1 + random.next() % 16) {
      let at = ArenaArray<UInt64>.headerSize + Int(random.next() % UInt64(memory.bytes.count - 64))
      memory.bytes[at] ^= UInt8(truncatingIfNeeded: random.next() | 1)
    }
    let attached = try ArenaArray<UInt64>.attach(memory.bytes)
    for i in 0..<attached.count {
      if let value = attached[i] { #expect(value == UInt64(i) &* 0x1234_5678) }
    }
  }
}
