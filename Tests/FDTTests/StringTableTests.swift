import Testing

@testable import FDT

/// The strings block and each property's name offset, read straight from a
/// blob's bytes.
func stringsAndOffsets(_ blob: [UInt8]) -> (strings: [UInt8], offsets: [String: Int]) {
  func u32(_ at: Int) -> Int {
    Int(blob[at]) << 24 | Int(blob[at + 1]) << 16 | Int(blob[at + 2]) << 8 | Int(blob[at + 3])
  }
  let stringsStart = u32(12)
  let strings = Array(blob[stringsStart..<(stringsStart + u32(32))])
  var offsets: [String: Int] = [:]
  let tree = try! FlattenedDeviceTree(bytes: blob)
  tree.walk { event in
    if case .property(let p) = event { offsets[p.name] = u32(p.offset + 8) }
  }
  return (strings, offsets)
}

/// A root holding one empty property per name, in order.
func blob(names: [String], layout: FDTWriter.Layout) throws -> [UInt8] {
  var w = FDTWriter(layout: layout)
  try w.beginNode("")
  for name in names { try w.property(name) }
  try w.endNode()
  return try w.finish()
}

@Suite struct StringTableTests {
  // Hand-computed from libfdt's fdt_find_add_string_ (new strings go below
  // the old ones; a lookup scans from the newest) and dtc's
  // stringtable_insert (append; a lookup scans from the oldest).

  @Test func shortThenLongLibfdt() throws {
    let (strings, offsets) = stringsAndOffsets(
      try blob(names: ["reg", "interrupt-reg"], layout: .libfdt))
    #expect(strings == Array("interrupt-reg\0reg\0".utf8))
    #expect(offsets == ["interrupt-reg": 0, "reg": 14])
  }

  @Test func longThenShortLibfdt() throws {
    let (strings, offsets) = stringsAndOffsets(
      try blob(names: ["interrupt-reg", "reg"], layout: .libfdt))
    #expect(strings == Array("interrupt-reg\0".utf8))
    #expect(offsets == ["interrupt-reg": 0, "reg": 10])
  }

  @Test func shortThenLongDTC() throws {
    let (strings, offsets) = stringsAndOffsets(
      try blob(names: ["reg", "interrupt-reg"], layout: .dtc))
    #expect(strings == Array("reg\0interrupt-reg\0".utf8))
    #expect(offsets == ["reg": 0, "interrupt-reg": 4])
  }

  @Test func longThenShortDTC() throws {
    let (strings, offsets) = stringsAndOffsets(
      try blob(names: ["interrupt-reg", "reg"], layout: .dtc))
    #expect(strings == Array("interrupt-reg\0".utf8))
    #expect(offsets == ["interrupt-reg": 0, "reg": 10])
  }

  /// "g" ends both "reg" and "interrupt-reg": libfdt finds it in the newest
  /// string, dtc in the oldest.
  @Test func whichOccurrenceIsShared() throws {
    let names = ["reg", "interrupt-reg", "g"]
    let libfdt = stringsAndOffsets(try blob(names: names, layout: .libfdt))
    #expect(libfdt.strings == Array("interrupt-reg\0reg\0".utf8))
    #expect(libfdt.offsets == ["interrupt-reg": 0, "reg": 14, "g": 12])
    let dtc = stringsAndOffsets(try blob(names: names, layout: .dtc))
    #expect(dtc.strings == Array("reg\0interrupt-reg\0".utf8))
    #expect(dtc.offsets == ["reg": 0, "interrupt-reg": 4, "g": 2])
  }

  @Test func sharedSuffixThenNewerOwner() throws {
    // "eg" is shared from "reg"; then "xeg" arrives: for libfdt the newest
    // string ending in "eg" is now "xeg", but "eg" keeps its first offset.
    let names = ["reg", "eg", "xeg", "g"]
    let libfdt = stringsAndOffsets(try blob(names: names, layout: .libfdt))
    #expect(libfdt.strings == Array("xeg\0reg\0".utf8))
    #expect(libfdt.offsets == ["reg": 4, "eg": 5, "xeg": 0, "g": 2])
    let dtc = stringsAndOffsets(try blob(names: names, layout: .dtc))
    #expect(dtc.strings == Array("reg\0xeg\0".utf8))
    #expect(dtc.offsets == ["reg": 0, "eg": 1, "xeg": 4, "g": 2])
  }

  @Test func repeatedNamesAreStoredOnce() throws {
    var w = FDTWriter(layout: .libfdt)
    try w.beginNode("")
    try w.property("a")
    try w.property("b")
    for i in 0..<5 {
      try w.beginNode("n\(i)")
      try w.property("b")
      try w.property("a")
      try w.endNode()
    }
    try w.endNode()
    let (strings, offsets) = stringsAndOffsets(try w.finish())
    #expect(strings == Array("b\0a\0".utf8))
    #expect(offsets == ["a": 2, "b": 0])
  }

  @Test(arguments: FDTWriter.Layout.allCases)
  func noStringsNoBlock(layout: FDTWriter.Layout) throws {
    let (strings, _) = stringsAndOffsets(try blob(names: [], layout: layout))
    #expect(strings.isEmpty)
  }

  /// Many names with shared suffixes: every offset points at its name,
  /// and no string is stored twice.
  @Test(arguments: FDTWriter.Layout.allCases)
  func manyNamesResolve(layout: FDTWriter.Layout) throws {
    var names: [String] = []
    for i in 0..<500 {
      names.append("p\(i)")
      names.append("x-p\(i)")
      if i % 3 == 0 { names.append("\(i)") }
    }
    let (strings, offsets) = stringsAndOffsets(try blob(names: names, layout: layout))
    for name in names {
      let at = try #require(offsets[name])
      let end = strings[at...].firstIndex(of: 0)!
      #expect(String(decoding: strings[at..<end], as: UTF8.self) == name)
    }
    let stored = strings.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    #expect(Set(stored).count == stored.count)
    // Each "\(i)" is found inside the earlier "p\(i)" or "x-p\(i)".
    #expect(!stored.contains("0") && !stored.contains("3"))
  }
}
