import FDT
import Testing

@testable import KHO

@Suite struct MemCacheTests {
  let page: UInt64 = 4096
  let arena: UInt64 = 1 << 30
  let scratch: Range<UInt64> = 0x1000_0000..<0x1100_0000

  /// A KHO blob with one node per entry of `nodes`, each with `mem` words.
  func blob(_ nodes: [(String, [UInt64])], extra: [(String, [UInt8])] = []) throws
    -> FlattenedDeviceTree
  {
    var w = FDTWriter()
    try w.beginNode("")
    try w.property("compatible", string: "kho-v1")
    for (name, words) in nodes {
      try w.beginNode(name)
      try w.property("mem", native: words)
      try w.endNode()
    }
    for (name, bytes) in extra {
      try w.beginNode(name)
      try w.property("mem", bytes: bytes)
      try w.endNode()
    }
    try w.endNode()
    return try FlattenedDeviceTree(bytes: w.finish())
  }

  @Test func alignsSortsAndMerges() throws {
    let tree = try blob([
      ("b", [0x5000, 0x10, 0x1_0000, 0x2000]),  // 0x5000+0x10 -> one page
      ("a", [0x1_1800, 0x1000, 0x4fff, 0x2]),  // 0x11800.. -> 0x11000..0x13000 ; 0x4000..0x6000
    ])
    let cache = try MemCache(tree: tree, pageSize: page, arenaSize: arena, scratch: scratch)
    #expect(
      cache.ranges == [
        KHOMemoryRange(address: 0x4000, length: 0x2000),
        KHOMemoryRange(address: 0x1_0000, length: 0x3000),
      ])
    #expect(cache.totalBytes == 0x5000)
    #expect(cache.warnings.isEmpty)
  }

  @Test func ignoresMemOfWrongLengthWithWarning() throws {
    let tree = try blob(
      [("good", [0x2000, 0x1000])], extra: [("odd", [UInt8](repeating: 1, count: 24))])
    let cache = try MemCache(tree: tree, pageSize: page, arenaSize: arena, scratch: scratch)
    #expect(cache.ranges == [KHOMemoryRange(address: 0x2000, length: 0x1000)])
    #expect(cache.warnings.count == 1)
    #expect(cache.warnings[0].contains("/odd"))
  }

  @Test func refusesRangeOverlappingScratch() throws {
    let tree = try blob([("ok", [0x2000, 0x1000]), ("bad", [scratch.upperBound - 1, 2])])
    #expect {
      try MemCache(tree: tree, pageSize: page, arenaSize: arena, scratch: scratch)
    } throws: { error in
      (error as? MemCacheError)?.kind == .overlapsScratch
        && (error as? MemCacheError)?.node == "/bad"
    }
  }

  @Test func refusesRangeLeavingArenaOrOverflowing() throws {
    for words: [UInt64] in [[arena - 0x1000, 0x2000], [UInt64.max - 1, 4], [arena, 1]] {
      let tree = try blob([("bad", words)])
      #expect(throws: MemCacheError.self) {
        try MemCache(tree: tree, pageSize: page, arenaSize: arena, scratch: scratch)
      }
    }
  }

  @Test func encodesAndDecodesKhoMem() throws {
    let tree = try blob([("a", [0x2000, 0x1000, 0x8000, 0x3000])])
    let cache = try MemCache(tree: tree, pageSize: page, arenaSize: arena, scratch: scratch)
    let bytes = cache.encoded
    #expect(bytes.count == 32)
    let decoded = bytes.withUnsafeBytes { MemCache.decode($0) }
    #expect(decoded == cache.ranges)
    let again = try MemCache(
      validating: decoded, pageSize: page, arenaSize: arena, scratch: scratch)
    #expect(again.ranges == cache.ranges)
  }

  @Test func validatingRefusesUnsortedUnalignedOverlapping() {
    let cases: [[KHOMemoryRange]] = [
      [.init(address: 0x3000, length: 0x1000), .init(address: 0x1000, length: 0x1000)],
      [.init(address: 0x1001, length: 0x1000)],
      [.init(address: 0x1000, length: 0x2000), .init(address: 0x2000, length: 0x1000)],
      [.init(address: 0x1000, length: 0)],
    ]
    for ranges in cases {
      #expect(throws: MemCacheError.self) {
        try MemCache(validating: ranges, pageSize: page, arenaSize: arena, scratch: scratch)
      }
    }
    #expect(throws: MemCacheError.self) {
      try MemCache(
        validating: [.init(address: scratch.lowerBound, length: 0x1000)], pageSize: page,
        arenaSize: arena, scratch: scratch)
    }
  }
}
