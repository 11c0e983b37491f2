import Testing

@testable import KHO

@Suite struct PageAllocatorTests {
  let page: UInt64 = 0x1000

  private func make(pages: UInt64 = 64) -> PageAllocator {
    PageAllocator(pageSize: 0x1000, managed: 0..<(pages * 0x1000))
  }

  @Test func allocatesLowestFitAndFreesWithMerging() throws {
    let a = make()
    let x = try a.allocate(pages: 2)
    let y = try a.allocate(pages: 3)
    let z = try a.allocate(bytes: 1)
    #expect(x == 0..<0x2000)
    #expect(y == 0x2000..<0x5000)
    #expect(z == 0x5000..<0x6000)
    try a.free(y)
    #expect(
      a.fragmentation
        == FragmentationReport(
          totalBytes: 64 * page, freeBytes: 61 * page, largestFreeRun: 58 * page, freeRuns: 2))
    // A smaller request reuses the hole.
    #expect(try a.allocate(pages: 1) == 0x2000..<0x3000)
    try a.free(x)
    try a.free(0x2000..<0x3000)
    try a.free(z)
    #expect(a.freeRanges == [0..<(64 * page)])
  }

  @Test func partialFreeOfAnAllocation() throws {
    let a = make()
    _ = try a.allocate(pages: 4)
    try a.free(0x1000..<0x2000)
    #expect(a.freeRanges == [0x1000..<0x2000, 0x4000..<0x40000])
  }

  @Test func refusesDoubleFreeAndStrayFree() throws {
    let a = make()
    let r = try a.allocate(pages: 2)
    try a.free(r)
    #expect(throws: AllocatorError.notAllocated(r)) { try a.free(r) }
    _ = try a.allocate(pages: 1)
    // Half allocated, half free.
    #expect(throws: AllocatorError.notAllocated(0..<0x2000)) { try a.free(0..<0x2000) }
  }

  @Test func refusesMisalignedAndOutOfRange() {
    let a = make()
    #expect(throws: AllocatorError.misaligned(0x10..<0x1000)) { try a.reserve(0x10..<0x1000) }
    #expect(throws: AllocatorError.misaligned(0x1000..<0x1000)) { try a.free(0x1000..<0x1000) }
    #expect(throws: AllocatorError.outOfRange(0x3f000..<0x41000)) {
      try a.reserve(0x3f000..<0x41000)
    }
  }

  @Test func reserveSplitsAndRefusesOverlap() throws {
    let a = make()
    try a.reserve(0x8000..<0xa000)
    #expect(a.freeRanges == [0..<0x8000, 0xa000..<0x40000])
    #expect(throws: AllocatorError.notFree(0x9000..<0xb000)) { try a.reserve(0x9000..<0xb000) }
    #expect(!a.isFree(0x9000..<0xb000))
    #expect(a.isFree(0xa000..<0xb000))
    // Reserving the start and the end of a free run.
    try a.reserve(0..<0x1000)
    try a.reserve(0x3f000..<0x40000)
    #expect(a.freeRanges == [0x1000..<0x8000, 0xa000..<0x3f000])
    try a.free(0x8000..<0xa000)
    #expect(a.freeRanges == [0x1000..<0x3f000])
  }

  @Test func outOfMemoryReportsTheLargestRun() throws {
    let a = make(pages: 8)
    try a.reserve(0x3000..<0x4000)
    #expect(throws: AllocatorError.outOfMemory(bytes: 0x5000, largestFreeRun: 0x4000)) {
      try a.allocate(pages: 5)
    }
    #expect(throws: AllocatorError.outOfMemory(bytes: 0, largestFreeRun: 0)) {
      try a.allocate(pages: 0)
    }
  }

  @Test func allocationWindowLimitsWhereMemoryComesFrom() throws {
    let a = make()
    let scratch: Range<UInt64> = 0x20000..<0x24000
    a.allocationWindow = scratch
    let first = try a.allocate(pages: 2)
    #expect(scratch.contains(first.lowerBound) && first.upperBound <= scratch.upperBound)
    _ = try a.allocate(pages: 2)
    #expect(throws: AllocatorError.outOfMemory(bytes: 0x1000, largestFreeRun: 0)) {
      try a.allocate(pages: 1)
    }
    // Reservations ignore the window (preserved ranges lie outside it).
    try a.reserve(0..<0x4000)
    a.allocationWindow = nil
    #expect(try a.allocate(pages: 1) == 0x4000..<0x5000)
    // A per-call limit.
    #expect(try a.allocate(pages: 1, within: 0x30000..<0x40000) == 0x30000..<0x31000)
  }

  @Test func fragmentationOfACheckerboard() throws {
    let a = make(pages: 16)
    var ranges: [Range<UInt64>] = []
    for _ in 0..<16 { ranges.append(try a.allocate(pages: 1)) }
    for (i, r) in ranges.enumerated() where i % 2 == 0 { try a.free(r) }
    let report = a.fragmentation
    #expect(report.freeRuns == 8)
    #expect(report.freeBytes == 8 * page)
    #expect(report.largestFreeRun == page)
    #expect(throws: AllocatorError.self) { try a.allocate(pages: 2) }
  }

  @Test func concurrentUseKeepsEveryPageAccountedFor() async throws {
    let a = make(pages: 4096)
    try await withThrowingTaskGroup(of: [Range<UInt64>].self) { group in
      for worker in 0..<8 {
        group.addTask {
          var kept: [Range<UInt64>] = []
          for i in 0..<300 {
            let r = try a.allocate(pages: UInt64(1 + (i + worker) % 3))
            if i % 2 == 0 { try a.free(r) } else { kept.append(r) }
          }
          return kept
        }
      }
      var all: [Range<UInt64>] = []
      for try await kept in group { all += kept }
      // No two allocations overlap, and they plus the free runs cover all.
      all.sort { $0.lowerBound < $1.lowerBound }
      for (x, y) in zip(all, all.dropFirst()) { #expect(x.upperBound <= y.lowerBound) }
      let used = all.reduce(UInt64(0)) { $0 + ($1.upperBound - $1.lowerBound) }
      #expect(used + a.fragmentation.freeBytes == 4096 * page)
      for r in all { try a.free(r) }
    }
    #expect(a.freeRanges == [0..<(4096 * page)])
  }

  @Test func overArena() throws {
    let arena = try Arena(size: 4 << 20)
    let a = PageAllocator(arena: arena)
    #expect(a.managed == 0..<(4 << 20))
    #expect(a.pageSize == 0x1000)
    let scratch = try Scratch.reserve(length: 0x1800, in: a)
    #expect(scratch == 0..<0x2000)
    #expect(try Scratch.reserve(length: 0, in: a) == 0..<0)
  }
}

@Suite struct PageAllocatorWindowTests {
  @Test func unalignedWindowIsShrunkToWholePages() throws {
    let a = PageAllocator(pageSize: 0x1000, managed: 0..<0x10000)
    a.allocationWindow = 0x1800..<0x4800
    #expect(throws: AllocatorError.outOfMemory(bytes: 0x3000, largestFreeRun: 0x2000)) {
      try a.allocate(pages: 3)
    }
    #expect(try a.allocate(pages: 2) == 0x2000..<0x4000)
    a.allocationWindow = 0x1800..<0x2800
    #expect(throws: AllocatorError.outOfMemory(bytes: 0x1000, largestFreeRun: 0)) {
      try a.allocate(pages: 1)
    }
  }
}
