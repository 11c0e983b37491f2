import Testing

@testable import FDT

/// Runs `body`, which must throw an ``FDTError`` of `kind` (and, when given,
/// at `offset`).
func expectFDTError(
  _ kind: FDTError.Kind, at offset: Int?? = .none,
  sourceLocation: SourceLocation = #_sourceLocation,
  _ body: () throws(FDTError) -> Void
) {
  do {
    try body()
    Issue.record("expected \(kind), nothing was thrown", sourceLocation: sourceLocation)
  } catch {
    #expect(error.kind == kind, "\(error)", sourceLocation: sourceLocation)
    if let offset {
      #expect(error.offset == offset, "\(error)", sourceLocation: sourceLocation)
    }
  }
}

/// A small tree used across the writer tests.
func writeSample(_ w: inout FDTWriter) throws(FDTError) {
  try w.addReservation(address: 0x1000, size: 0x2000)
  try w.beginNode("")
  try w.property("compatible", string: "kho-v1")
  try w.property("reg", cells: [1, 2])
  try w.beginNode("sub@1")
  try w.property("interrupt-reg", cells64: [0x1_0000_0002])
  try w.property("names", strings: ["a", "bc"])
  try w.property("empty")
  try w.endNode()
  try w.endNode()
}

@Suite struct WriterTests {
  // MARK: Misuse

  @Test func propertyBeforeRoot() {
    var w = FDTWriter()
    expectFDTError(.badState) { () throws(FDTError) in try w.property("a", cells: [1]) }
  }

  @Test func propertyOutsideNodeAfterRootClosed() throws {
    var w = FDTWriter()
    try w.beginNode("")
    try w.endNode()
    expectFDTError(.badState) { () throws(FDTError) in try w.property("a") }
  }

  @Test func unbalancedEndNode() throws {
    var w = FDTWriter()
    expectFDTError(.badState) { () throws(FDTError) in try w.endNode() }
    try w.beginNode("")
    try w.endNode()
    expectFDTError(.badState) { () throws(FDTError) in try w.endNode() }
  }

  @Test func finishWithOpenNodes() throws {
    var w = FDTWriter()
    try w.beginNode("")
    try w.beginNode("a")
    expectFDTError(.badState) { () throws(FDTError) in _ = try w.finish() }
    try w.endNode()
    expectFDTError(.badState) { () throws(FDTError) in _ = try w.finish() }
    try w.endNode()
    _ = try w.finish()
  }

  @Test func finishWithoutRoot() {
    var w = FDTWriter()
    expectFDTError(.badState) { () throws(FDTError) in _ = try w.finish() }
  }

  @Test func finishTwice() throws {
    var w = FDTWriter()
    try w.beginNode("")
    try w.endNode()
    _ = try w.finish()
    expectFDTError(.badState) { () throws(FDTError) in _ = try w.finish() }
    expectFDTError(.badState) { () throws(FDTError) in try w.beginNode("x") }
    expectFDTError(.badState) { () throws(FDTError) in try w.endNode() }
    expectFDTError(.badState) { () throws(FDTError) in try w.property("a") }
  }

  @Test func secondRoot() throws {
    var w = FDTWriter()
    try w.beginNode("")
    try w.endNode()
    expectFDTError(.badState) { () throws(FDTError) in try w.beginNode("") }
    expectFDTError(.badState) { () throws(FDTError) in try w.beginNode("x") }
    // The first root is intact.
    let tree = try FlattenedDeviceTree(bytes: w.finish())
    #expect(tree.nodeCount == 1)
  }

  /// The reader refuses a named root (as libfdt's fdt_check_full and dtc's
  /// test suite do), so the writer should refuse to write one.
  @Test func namedRoot() {
    var w = FDTWriter()
    expectFDTError(.badName) { () throws(FDTError) in try w.beginNode("root") }
  }

  @Test func reservationAfterNode() throws {
    var w = FDTWriter()
    try w.addReservation(address: 1, size: 2)
    try w.beginNode("")
    expectFDTError(.badState) { () throws(FDTError) in
      try w.addReservation(address: 3, size: 4)
    }
    try w.endNode()
    let tree = try FlattenedDeviceTree(bytes: w.finish())
    #expect(tree.reservations == [MemoryReservation(address: 1, size: 2)])
  }

  @Test func nulInNames() throws {
    var w = FDTWriter()
    try w.beginNode("")
    expectFDTError(.badName) { () throws(FDTError) in try w.beginNode("a\0b") }
    expectFDTError(.badName) { () throws(FDTError) in try w.property("p\0q", cells: [1]) }
    // Still usable: nothing was written.
    try w.property("p", cells: [1])
    try w.endNode()
    let tree = try FlattenedDeviceTree(bytes: w.finish())
    #expect(tree.root.children.isEmpty)
    #expect(tree.root.properties.map(\.name) == ["p"])
  }

  // MARK: Output

  @Test(arguments: FDTWriter.Layout.allCases)
  func sampleReadsBack(layout: FDTWriter.Layout) throws {
    var w = FDTWriter(layout: layout)
    try writeSample(&w)
    let blob = try w.finish()
    #expect(blob.count == w.size)
    let tree = try FlattenedDeviceTree(bytes: blob)
    #expect(Int(tree.header.reservationOffset) == (layout == .libfdt ? 48 : 40))
    #expect(tree.header.version == 17 && tree.header.lastCompatibleVersion == 16)
    #expect(Int(tree.header.totalSize) == blob.count)
    #expect(tree.reservations == [MemoryReservation(address: 0x1000, size: 0x2000)])
    #expect(tree.root.property("compatible")?.string == "kho-v1")
    #expect(tree.root.property("reg")?.cells == [1, 2])
    let sub = try #require(tree.node(atPath: "/sub@1"))
    #expect(sub.property("interrupt-reg")?.cells64 == [0x1_0000_0002])
    #expect(sub.property("names")?.strings == ["a", "bc"])
    #expect(sub.property("empty")?.value.isEmpty == true)
  }

  /// The smallest interesting tree, byte by byte (libfdt: reservation map
  /// at 48; dtc: at 40).
  @Test func handComputedBytes() throws {
    func blob(_ layout: FDTWriter.Layout) throws -> [UInt8] {
      var w = FDTWriter(layout: layout)
      try w.beginNode("")
      try w.property("a", cells: [1])
      try w.endNode()
      return try w.finish()
    }
    func be(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }
    let structure: [UInt8] =
      be(1) + [0, 0, 0, 0]  // FDT_BEGIN_NODE ""
      + be(3) + be(4) + be(0) + be(1)  // FDT_PROP len 4 nameoff 0 <1>
      + be(2) + be(9)  // FDT_END_NODE FDT_END
    let libfdt: [UInt8] =
      be(0xd00d_feed) + be(98) + be(64) + be(96) + be(48) + be(17) + be(16) + be(0) + be(2)
      + be(32) + [UInt8](repeating: 0, count: 8 + 16) + structure + [0x61, 0]
    #expect(try blob(.libfdt) == libfdt)
    let dtc: [UInt8] =
      be(0xd00d_feed) + be(90) + be(56) + be(88) + be(40) + be(17) + be(16) + be(0) + be(2)
      + be(32) + [UInt8](repeating: 0, count: 16) + structure + [0x61, 0]
    #expect(try blob(.dtc) == dtc)
  }

  @Test func nativeValuesAreInMachineOrder() throws {
    var w = FDTWriter()
    try w.beginNode("")
    try w.property("n", native: [UInt64(0x0102_0304_0506_0708)])
    try w.property("m", native: [UInt16(0x0102), 0x0304])
    try w.endNode()
    let tree = try FlattenedDeviceTree(bytes: w.finish())
    let n = try #require(tree.root.property("n"))
    #expect(Array(n.value) == withUnsafeBytes(of: UInt64(0x0102_0304_0506_0708)) { Array($0) })
    #expect(n.native(UInt64.self) == [0x0102_0304_0506_0708])
    #expect(tree.root.property("m")?.native(UInt16.self) == [0x0102, 0x0304])
  }

  @Test func placeholderFill() throws {
    var w = FDTWriter()
    try w.beginNode("")
    try w.property("p", count: 5) { buffer in
      for i in 0..<buffer.count { buffer[i] = UInt8(i + 1) }
    }
    try w.property("z", count: 0) { _ in }
    try w.endNode()
    let tree = try FlattenedDeviceTree(bytes: w.finish())
    #expect(Array(tree.root.property("p")!.value) == [1, 2, 3, 4, 5])
    #expect(tree.root.property("z")!.value.isEmpty)
  }

  @Test func bootCPUIDIsWritten() throws {
    var w = FDTWriter(layout: .dtc)
    w.bootCPUID = 0x1234
    try w.beginNode("")
    try w.endNode()
    #expect(try FlattenedDeviceTree(bytes: w.finish()).header.bootCPUID == 0x1234)
  }

  // MARK: Capacity

  /// The operations of `writeSample`, one at a time, so that a test can
  /// stop at any of them.
  static let stepCount = 10

  static func step(_ i: Int, _ w: inout FDTWriter) throws(FDTError) {
    switch i {
    case 0: try w.addReservation(address: 0x1000, size: 0x2000)
    case 1: try w.beginNode("")
    case 2: try w.property("compatible", string: "kho-v1")
    case 3: try w.property("reg", cells: [1, 2])
    case 4: try w.beginNode("sub@1")
    case 5: try w.property("interrupt-reg", cells64: [0x1_0000_0002])
    case 6: try w.property("names", strings: ["a", "bc"])
    case 7: try w.property("empty")
    default: try w.endNode()
    }
  }

  @Test(arguments: FDTWriter.Layout.allCases)
  func exactCapacitySucceeds(layout: FDTWriter.Layout) throws {
    var free = FDTWriter(layout: layout)
    try writeSample(&free)
    let expected = try free.finish()
    var w = FDTWriter(layout: layout, capacity: expected.count)
    try writeSample(&w)
    #expect(try w.finish() == expected)
  }

  /// For every capacity below the blob's size, the first step whose result
  /// would not fit throws `.noSpace`, every step before it succeeds, and
  /// the writer is unchanged by the failure: the same step succeeds once
  /// the remaining steps are replayed on a writer with enough room, and
  /// the bytes are identical.
  @Test(arguments: FDTWriter.Layout.allCases)
  func noSpaceAtTheRightMoment(layout: FDTWriter.Layout) throws {
    var free = FDTWriter(layout: layout)
    var sizes: [Int] = []
    for i in 0..<Self.stepCount {
      try Self.step(i, &free)
      sizes.append(free.size)
    }
    let expected = try free.finish()
    for capacity in 0..<expected.count {
      var w = FDTWriter(layout: layout, capacity: capacity)
      var failedAt: Int? = nil
      for i in 0..<Self.stepCount {
        let before = w.size
        do throws(FDTError) {
          try Self.step(i, &w)
        } catch {
          #expect(error.kind == .noSpace)
          #expect(w.size == before, "a failed step must leave the writer unchanged")
          failedAt = i
          break
        }
      }
      let firstTooBig = sizes.firstIndex { $0 > capacity }
      if let failedAt {
        #expect(failedAt == firstTooBig, "capacity \(capacity)")
        // A retry with more capacity: replay everything.
        var retry = FDTWriter(layout: layout, capacity: expected.count)
        for i in 0..<Self.stepCount { try Self.step(i, &retry) }
        #expect(try retry.finish() == expected)
      } else {
        // Everything fitted: only FDT_END can be left.
        #expect(firstTooBig == nil)
        expectFDTError(.noSpace) { () throws(FDTError) in _ = try w.finish() }
      }
    }
  }

  /// A failed property with a new name leaves no trace in the string
  /// table: the writer continues and produces the bytes of a writer that
  /// never tried.
  @Test(arguments: FDTWriter.Layout.allCases)
  func failedPropertyLeavesNoTrace(layout: FDTWriter.Layout) throws {
    func start(_ w: inout FDTWriter) throws(FDTError) {
      try w.beginNode("")
      try w.property("reg", cells: [1])
      try w.property("interrupt-reg", cells: [2])
    }
    func end(_ w: inout FDTWriter) throws(FDTError) {
      try w.property("g", cells: [3])
      try w.property("other", cells: [4])
      try w.endNode()
    }
    var reference = FDTWriter(layout: layout)
    try start(&reference)
    try end(&reference)
    let expected = try reference.finish()

    var w = FDTWriter(layout: layout, capacity: expected.count)
    try start(&w)
    expectFDTError(.noSpace) { () throws(FDTError) in
      try w.property("a-brand-new-name", bytes: [UInt8](repeating: 7, count: 64))
    }
    expectFDTError(.noSpace) { () throws(FDTError) in
      try w.property("reg", bytes: [UInt8](repeating: 7, count: 64))
    }
    try end(&w)
    #expect(try w.finish() == expected)
  }

  @Test func noSpaceForReservationAndNode() throws {
    var w = FDTWriter(layout: .dtc, capacity: 40 + 16 + 4)
    expectFDTError(.noSpace) { () throws(FDTError) in
      try w.addReservation(address: 1, size: 1)
    }
    expectFDTError(.noSpace) { () throws(FDTError) in try w.beginNode("") }
    #expect(w.size == 40 + 16 + 4)
  }

  @Test func growableWriterHasNoLimit() throws {
    var w = FDTWriter(layout: .libfdt)
    try w.beginNode("")
    for i in 0..<2000 {
      try w.beginNode("n@\(i)")
      try w.property("v", bytes: [UInt8](repeating: UInt8(i & 0xff), count: 100))
      try w.endNode()
    }
    try w.endNode()
    let tree = try FlattenedDeviceTree(bytes: w.finish())
    #expect(tree.nodeCount == 2001)
  }
}
