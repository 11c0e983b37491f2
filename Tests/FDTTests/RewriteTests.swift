import Testing

@testable import FDT

@Suite struct RewriteTests {
  func sample(_ layout: FDTWriter.Layout, bootCPUID: UInt32 = 0) throws -> [UInt8] {
    var w = FDTWriter(layout: layout)
    w.bootCPUID = bootCPUID
    try writeSample(&w)
    return try w.finish()
  }

  @Test(arguments: FDTWriter.Layout.allCases, FDTWriter.Layout.allCases)
  func rewriteMatchesTheWriter(from: FDTWriter.Layout, to: FDTWriter.Layout) throws {
    let tree = try FlattenedDeviceTree(bytes: sample(from, bootCPUID: 3))
    #expect(try tree.rewritten(layout: to) == sample(to, bootCPUID: 3))
  }

  @Test func nopsAreDropped() throws {
    let withNops = Raw.tree(
      Raw.tokens(Raw.nop) + Raw.begin("") + Raw.tokens(Raw.nop) + Raw.property(4, 0, Raw.tokens(1))
        + Raw.begin("a") + Raw.tokens(Raw.nop, Raw.endNode, Raw.endNode, Raw.nop, Raw.end))
    let tree = try FlattenedDeviceTree(bytes: withNops)
    var w = FDTWriter(layout: .dtc)
    try w.beginNode("")
    try w.property("x", cells: [1])
    try w.beginNode("a")
    try w.endNode()
    try w.endNode()
    #expect(try tree.rewritten(layout: .dtc) == w.finish())
  }

  @Test func reservationsAndMangledLayoutAreNormalized() throws {
    let structure =
      Raw.begin("") + Raw.property(4, 0, Raw.tokens(7)) + Raw.tokens(Raw.endNode, Raw.end)
    let mangled = Raw.assemble(
      reservations: [(1, 2), (3, 4)], structure: structure, strings: Array("p\0".utf8),
      version: 16, order: "stm")
    let tree = try FlattenedDeviceTree(bytes: mangled)
    var w = FDTWriter(layout: .libfdt)
    try w.addReservation(address: 1, size: 2)
    try w.addReservation(address: 3, size: 4)
    try w.beginNode("")
    try w.property("p", cells: [7])
    try w.endNode()
    #expect(try tree.rewritten(layout: .libfdt) == w.finish())
  }

  @Test(arguments: FDTWriter.Layout.allCases)
  func rewriteIsIdempotent(layout: FDTWriter.Layout) throws {
    let once = try FlattenedDeviceTree(bytes: accessorTree().bytes).rewritten(layout: layout)
    let twice = try FlattenedDeviceTree(bytes: once).rewritten(layout: layout)
    #expect(once == twice)
    #expect(try FlattenedDeviceTree(bytes: once).sourceText == accessorTree().sourceText)
  }
}
