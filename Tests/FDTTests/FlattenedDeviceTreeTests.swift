import Testing

@testable import FDT

/// A tree with unit addresses, nesting, and values of every shape.
func accessorTree() throws -> FlattenedDeviceTree {
  var w = FDTWriter(layout: .libfdt)
  try w.addReservation(address: 0x1000, size: 0x2000)
  try w.addReservation(address: 0xffff_ffff_0000_0000, size: 1)
  try w.beginNode("")
  try w.property("compatible", strings: ["vendor,board", "generic"])
  try w.property("model", string: "test")
  try w.beginNode("soc")
  try w.beginNode("serial@1000")
  try w.property("reg", cells: [0x1000, 0x100])
  try w.property("big", cells64: [0x1_2345_6789])
  try w.property("odd", bytes: [1, 2, 3])
  try w.property("empty")
  try w.endNode()
  try w.beginNode("serial@2000")
  try w.property("reg", cells: [0x2000, 0x100])
  try w.endNode()
  try w.beginNode("serial")
  try w.endNode()
  try w.beginNode("gpio@0")
  try w.beginNode("deep")
  try w.property("level", cells: [3])
  try w.endNode()
  try w.endNode()
  try w.endNode()
  try w.beginNode("chosen")
  try w.property("kho", native: [UInt64(0x20_0000), 0x4000])
  try w.endNode()
  try w.endNode()
  return try FlattenedDeviceTree(bytes: w.finish())
}

@Suite struct FlattenedDeviceTreeTests {
  @Test func counts() throws {
    let tree = try accessorTree()
    #expect(tree.nodeCount == 8)
    #expect(tree.propertyCount == 9)
    #expect(
      tree.reservations == [
        MemoryReservation(address: 0x1000, size: 0x2000),
        MemoryReservation(address: 0xffff_ffff_0000_0000, size: 1),
      ])
  }

  @Test func rootAndChildren() throws {
    let tree = try accessorTree()
    #expect(tree.root.name == "")
    #expect(tree.root.children.map(\.name) == ["soc", "chosen"])
    let soc = try #require(tree.node(atPath: "/soc"))
    #expect(soc.children.map(\.name) == ["serial@1000", "serial@2000", "serial", "gpio@0"])
    #expect(soc.properties.isEmpty)
    #expect(tree.node(atPath: "/soc/gpio@0/deep")?.children.isEmpty == true)
  }

  @Test func paths() throws {
    let tree = try accessorTree()
    #expect(tree.node(atPath: "/")?.offset == tree.root.offset)
    #expect(tree.node(atPath: "/soc/serial@2000")?.property("reg")?.cells == [0x2000, 0x100])
    // Without a unit address: the first node of that base name, as
    // libfdt's fdt_path_offset.
    #expect(tree.node(atPath: "/soc/serial")?.name == "serial@1000")
    #expect(tree.node(atPath: "/soc/gpio/deep")?.property("level")?.cells == [3])
    #expect(tree.node(atPath: "/soc//gpio@0/")?.name == "gpio@0")
    #expect(tree.node(atPath: "/soc/serial@3000") == nil)
    #expect(tree.node(atPath: "/soc/seria") == nil)
    #expect(tree.node(atPath: "/nothing") == nil)
    #expect(tree.node(atPath: "soc") == nil)
    #expect(tree.node(atPath: "") == nil)
    #expect(tree.root.child(named: "soc")?.child(named: "serial@2000") != nil)
    #expect(tree.root.child(named: "so") == nil)
  }

  @Test func propertyValues() throws {
    let tree = try accessorTree()
    #expect(tree.root.properties.map(\.name) == ["compatible", "model"])
    let compatible = try #require(tree.root.property("compatible"))
    #expect(compatible.strings == ["vendor,board", "generic"])
    #expect(compatible.string == nil)
    #expect(tree.root.property("model")?.string == "test")
    #expect(tree.root.property("model")?.strings == ["test"])
    #expect(tree.root.property("missing") == nil)

    let serial = try #require(tree.node(atPath: "/soc/serial@1000"))
    let reg = try #require(serial.property("reg"))
    #expect(reg.cells == [0x1000, 0x100])
    #expect(reg.cells64 == [0x0000_1000_0000_0100])
    #expect(reg.string == nil)
    #expect(Array(reg.value) == [0, 0, 0x10, 0, 0, 0, 1, 0])
    #expect(reg.valueRange.count == 8)
    #expect(serial.property("big")?.cells64 == [0x1_2345_6789])
    #expect(serial.property("big")?.cells == [1, 0x2345_6789])
    let odd = try #require(serial.property("odd"))
    #expect(odd.cells == nil && odd.cells64 == nil && odd.strings == nil)
    #expect(odd.native(UInt8.self) == [1, 2, 3])
    #expect(odd.native(UInt16.self) == nil)
    let empty = try #require(serial.property("empty"))
    #expect(empty.value.isEmpty)
    #expect(empty.cells == [])
    #expect(empty.strings == nil)

    let kho = try #require(tree.node(atPath: "/chosen")?.property("kho"))
    #expect(kho.native(UInt64.self) == [0x20_0000, 0x4000])
    #expect(kho.withValueBytes { $0.count } == 16)
  }

  @Test func stringListEdgeCases() throws {
    var w = FDTWriter()
    try w.beginNode("")
    try w.property("empties", bytes: [0, 0, 0])
    try w.property("one", bytes: Array("a\0".utf8))
    try w.property("unterminated", bytes: Array("ab".utf8))
    try w.endNode()
    let tree = try FlattenedDeviceTree(bytes: w.finish())
    #expect(tree.root.property("empties")?.strings == ["", "", ""])
    #expect(tree.root.property("one")?.string == "a")
    #expect(tree.root.property("unterminated")?.strings == nil)
  }

  @Test func walkVisitsEverythingInOrder() throws {
    let tree = try accessorTree()
    var events: [String] = []
    tree.walk { event in
      switch event {
      case .beginNode(let node): events.append("{\(node.name)")
      case .property(let property): events.append(property.name)
      case .endNode: events.append("}")
      }
    }
    #expect(
      events == [
        "{", "compatible", "model",
        "{soc",
        "{serial@1000", "reg", "big", "odd", "empty", "}",
        "{serial@2000", "reg", "}",
        "{serial", "}",
        "{gpio@0", "{deep", "level", "}", "}",
        "}",
        "{chosen", "kho", "}",
        "}",
      ])
  }

  @Test func walkCanStopWithAnError() throws {
    struct Stop: Error {}
    let tree = try accessorTree()
    var seen = 0
    #expect(throws: Stop.self) {
      try tree.walk { (event) throws(Stop) in
        seen += 1
        if seen == 3 { throw Stop() }
      }
    }
    #expect(seen == 3)
  }

  @Test func headerIsDecoded() throws {
    let tree = try accessorTree()
    #expect(tree.header.magic == 0xd00d_feed)
    #expect(Int(tree.header.totalSize) == tree.bytes.count)
    #expect(tree.header.reservationOffset == 48)
    #expect(tree.header.version == 17)
  }

  @Test func validateWithoutCopying() throws {
    let tree = try accessorTree()
    try tree.bytes.withUnsafeBytes { raw in
      try FlattenedDeviceTree.validate(raw)
    }
    var bad = tree.bytes
    bad[0] = 0
    bad.withUnsafeBytes { raw in
      expectFDTError(.badMagic, at: 0) { () throws(FDTError) in
        try FlattenedDeviceTree.validate(raw)
      }
    }
  }

  @Test func errorDescriptionNamesTheOffset() {
    let error = FDTError(.badStructure, at: 68, "a second root node")
    #expect(error.description == "offset 68: badStructure: a second root node")
    #expect(FDTError(.noSpace, at: nil, "full").description == "noSpace: full")
  }
}
