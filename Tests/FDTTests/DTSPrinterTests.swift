import Testing

@testable import FDT

/// The source text of a root holding one property `p` with `value`.
func dts(_ value: [UInt8]) throws -> String {
  var w = FDTWriter()
  try w.beginNode("")
  try w.property("p", bytes: value)
  try w.endNode()
  return try FlattenedDeviceTree(bytes: w.finish()).sourceText
}

/// Just the property's line, without its tab and newline.
func line(_ value: [UInt8]) throws -> String {
  let text = try dts(value)
  let lines = text.split(separator: "\n")
  return String(lines[2].dropFirst())
}

@Suite struct DTSPrinterTests {
  @Test func wholeTree() throws {
    var w = FDTWriter()
    try w.addReservation(address: 0x1000, size: 0x2000)
    try w.addReservation(address: 0xffff_ffff_ffff_ffff, size: 0x10)
    try w.beginNode("")
    try w.property("compatible", strings: ["a,b", "c"])
    try w.property("#address-cells", cells: [1])
    try w.beginNode("node@1")
    try w.property("reg", cells: [1, 0xabcdef])
    try w.property("flag")
    try w.beginNode("inner")
    try w.endNode()
    try w.endNode()
    try w.beginNode("empty")
    try w.endNode()
    try w.endNode()
    let text = try FlattenedDeviceTree(bytes: w.finish()).sourceText
    #expect(
      text == """
        /dts-v1/;

        /memreserve/\t0x0000000000001000 0x0000000000002000;
        /memreserve/\t0xffffffffffffffff 0x0000000000000010;
        / {
        \tcompatible = "a,b\\0c";
        \t#address-cells = <0x01>;

        \tnode@1 {
        \t\treg = <0x01 0xabcdef>;
        \t\tflag;

        \t\tinner {
        \t\t};
        \t};

        \tempty {
        \t};
        };

        """)
  }

  @Test func emptyRoot() throws {
    var w = FDTWriter()
    try w.beginNode("")
    try w.endNode()
    let tree = try FlattenedDeviceTree(bytes: w.finish())
    #expect(tree.sourceText == "/dts-v1/;\n\n/ {\n};\n")
    #expect(tree.sourceBytes == Array(tree.sourceText.utf8))
  }

  // dtc's guess_value_type: a string when the value ends with NUL, holds
  // only printable characters, C escapes and NULs, and no more NULs than
  // other bytes; else cells when the size is a multiple of 4; else bytes.

  @Test func guessing() throws {
    #expect(try line([]) == "p;")
    #expect(try line([0]) == "p = [00];")
    #expect(try line([0, 0]) == "p = [00 00];")
    #expect(try line([0, 0, 0, 0]) == "p = <0x00>;")
    #expect(try line(Array("a\0\0\0".utf8)) == "p = <0x61000000>;")
    #expect(try line(Array("ab\0\0".utf8)) == "p = \"ab\\0\";")
    #expect(try line(Array("a\0\0".utf8)) == "p = [61 00 00];")
    #expect(try line(Array("a\0".utf8)) == "p = \"a\";")
    #expect(try line(Array("a\0b\0".utf8)) == "p = \"a\\0b\";")
    #expect(try line(Array("\0a\0".utf8)) == "p = [00 61 00];")
    #expect(try line(Array("abcd".utf8)) == "p = <0x61626364>;")
    #expect(try line(Array("abc".utf8)) == "p = [61 62 63];")
    #expect(try line([0x7f, 0]) == "p = [7f 00];")
    #expect(try line([0x80, 0]) == "p = [80 00];")
    #expect(try line([0xff, 0, 0, 0]) == "p = <0xff000000>;")
    #expect(try line([0x1b, 0]) == "p = [1b 00];")
    #expect(try line([1, 2, 3]) == "p = [01 02 03];")
    #expect(try line([0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef]) == "p = <0x01 0xdeadbeef>;")
  }

  @Test func escapes() throws {
    let value: [UInt8] = [7, 8, 9, 10, 11, 12, 13] + Array("\\\"' ~".utf8) + [0]
    #expect(try line(value) == #"p = "\a\b\t\n\v\f\r\\\"' ~";"#)
    let list = Array("tab\there\0quote\"\0".utf8)
    #expect(try line(list) == #"p = "tab\there\0quote\"";"#)
  }

  @Test func valueForm() {
    func form(_ bytes: [UInt8]) -> DTSValueForm {
      bytes.withUnsafeBytes { DTSValueForm(guessing: $0) }
    }
    #expect(form(Array("x\0".utf8)) == .string)
    #expect(form([0, 0, 0, 0]) == .cells)
    #expect(form([0]) == .bytes)
    #expect(form(Array("\t\n\0".utf8)) == .string)
    #expect(form([0x0e, 0]) == .bytes)
  }

  /// dtc's name_properties check deletes a node's first "name" property
  /// when it equals the node's base name plus NUL.
  @Test func redundantNamePropertyIsDropped() throws {
    var w = FDTWriter()
    try w.beginNode("")
    try w.property("name", bytes: [0])
    try w.beginNode("dev@10")
    try w.property("name", string: "dev")
    try w.property("x")
    try w.endNode()
    try w.beginNode("other")
    try w.property("x")
    try w.property("name", string: "other")
    try w.endNode()
    try w.endNode()
    let text = try FlattenedDeviceTree(bytes: w.finish()).sourceText
    #expect(
      text == """
        /dts-v1/;

        / {

        \tdev@10 {
        \t\tx;
        \t};

        \tother {
        \t\tx;
        \t};
        };

        """)
  }

  @Test func deepNestingIndents() throws {
    var w = FDTWriter()
    try w.beginNode("")
    for i in 0..<50 { try w.beginNode("n\(i)") }
    try w.property("leaf")
    for _ in 0..<51 { try w.endNode() }
    let text = try FlattenedDeviceTree(bytes: w.finish()).sourceText
    #expect(text.contains("\n" + String(repeating: "\t", count: 51) + "leaf;\n"))
    #expect(text.hasSuffix("\t};\n};\n"))
  }
}
