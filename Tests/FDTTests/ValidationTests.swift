import Testing

@testable import FDT

// Blobs built by hand, independent of the writer, so that every malformed
// kind can be placed at a known offset.
enum Raw {
  static let beginNode: UInt32 = 1
  static let endNode: UInt32 = 2
  static let prop: UInt32 = 3
  static let nop: UInt32 = 4
  static let end: UInt32 = 9

  static func be32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }
  static func be64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }

  static func tokens(_ words: UInt32...) -> [UInt8] { words.flatMap(be32) }

  static func padded(_ bytes: [UInt8]) -> [UInt8] {
    bytes + [UInt8](repeating: 0, count: (4 - bytes.count % 4) % 4)
  }

  static func begin(_ name: String) -> [UInt8] { padded(be32(beginNode) + Array(name.utf8) + [0]) }

  static func property(_ length: UInt32, _ nameOffset: UInt32, _ value: [UInt8] = []) -> [UInt8] {
    padded(tokens(prop, length, nameOffset) + value)
  }

  /// A blob with its blocks in `order` (m: reservations, t: structure,
  /// s: strings), aligned as dtc's mangle-layout aligns them.
  static func assemble(
    reservations: [(UInt64, UInt64)] = [], terminated: Bool = true,
    structure: [UInt8], strings: [UInt8], version: UInt32 = 17, lastCompatible: UInt32 = 16,
    order: String = "mts"
  ) -> [UInt8] {
    var rsv = reservations.flatMap { be64($0.0) + be64($0.1) }
    if terminated { rsv += [UInt8](repeating: 0, count: 16) }
    var out = [UInt8](repeating: 0, count: version >= 17 ? 40 : 36)
    var offsets: [Character: Int] = [:]
    for block in order {
      let (data, align): ([UInt8], Int) =
        switch block {
        case "m": (rsv, 8)
        case "t": (structure, 4)
        default: (strings, 1)
        }
      while out.count % align != 0 { out.append(0) }
      offsets[block] = out.count
      out += data
    }
    set32(&out, 0, 0xd00d_feed)
    set32(&out, 4, UInt32(out.count))
    set32(&out, 8, UInt32(offsets["t"]!))
    set32(&out, 12, UInt32(offsets["s"]!))
    set32(&out, 16, UInt32(offsets["m"]!))
    set32(&out, 20, version)
    set32(&out, 24, lastCompatible)
    set32(&out, 32, UInt32(strings.count))
    if version >= 17 { set32(&out, 36, UInt32(structure.count)) }
    return out
  }

  static func set32(_ b: inout [UInt8], _ at: Int, _ v: UInt32) {
    b.replaceSubrange(at..<(at + 4), with: be32(v))
  }

  /// The reference blob of these tests:
  ///
  ///     0   header (40)
  ///     40  reservation (0x1000, 0x2000), terminator
  ///     72  FDT_BEGIN_NODE ""
  ///     80  FDT_PROP len 4 nameoff 0 ("compatible") "kho\0"
  ///     96  FDT_BEGIN_NODE "sub@1" (name at 100)
  ///     108 FDT_PROP len 8 nameoff 11 ("reg") <1 2>
  ///     128 FDT_END_NODE
  ///     132 FDT_END_NODE
  ///     136 FDT_END
  ///     140 strings "compatible\0reg\0"
  ///     155 end
  static let good: [UInt8] = assemble(
    reservations: [(0x1000, 0x2000)],
    structure: begin("") + property(4, 0, Array("kho\0".utf8)) + begin("sub@1")
      + property(8, 11, tokens(1, 2)) + tokens(endNode, endNode, end),
    strings: Array("compatible\0reg\0".utf8))

  /// A blob with no reservations, so that its structure block starts at
  /// 56, holding `structure`.
  static func tree(_ structure: [UInt8], strings: [UInt8] = Array("x\0".utf8)) -> [UInt8] {
    assemble(structure: structure, strings: strings)
  }
}

/// Opens `bytes`, which must be refused with `kind` at `offset`.
func expectRefused(
  _ bytes: [UInt8], _ kind: FDTError.Kind, at offset: Int,
  sourceLocation: SourceLocation = #_sourceLocation
) {
  expectFDTError(kind, at: offset, sourceLocation: sourceLocation) { () throws(FDTError) in
    _ = try FlattenedDeviceTree(bytes: bytes)
  }
}

@Suite struct ValidationTests {
  @Test func referenceBlobIsValid() throws {
    #expect(Raw.good.count == 155)
    let tree = try FlattenedDeviceTree(bytes: Raw.good)
    #expect(tree.header.structOffset == 72 && tree.header.stringsOffset == 140)
    #expect(tree.nodeCount == 2 && tree.propertyCount == 2)
    #expect(tree.reservations == [MemoryReservation(address: 0x1000, size: 0x2000)])
    #expect(tree.node(atPath: "/sub")?.property("reg")?.cells == [1, 2])
  }

  // MARK: Header

  @Test func badMagic() {
    var b = Raw.good
    b[3] ^= 1
    expectRefused(b, .badMagic, at: 0)
  }

  /// Every prefix of a valid blob is refused as truncated, at the right
  /// place, and never crashes.
  @Test func everyPrefixIsTruncated() {
    for n in 0..<Raw.good.count {
      let prefix = Array(Raw.good[..<n])
      expectRefused(prefix, .truncated, at: n < 40 ? 0 : n)
    }
  }

  /// Every prefix whose header claims exactly the prefix's length: the
  /// blocks now run past the end. Refused, never a crash.
  @Test func everyPrefixWithMatchingTotalSizeIsRefused() {
    for n in 40..<Raw.good.count {
      var prefix = Array(Raw.good[..<n])
      Raw.set32(&prefix, 4, UInt32(n))
      #expect(throws: FDTError.self, "prefix \(n)") { try FlattenedDeviceTree(bytes: prefix) }
    }
  }

  @Test func totalSizeLargerThanBuffer() {
    var b = Raw.good
    Raw.set32(&b, 4, 156)
    expectRefused(b, .truncated, at: 155)
    Raw.set32(&b, 4, 0xffff_ffff)
    expectRefused(b, .truncated, at: 155)
  }

  @Test func totalSizeSmallerThanHeader() {
    var b = Raw.good
    Raw.set32(&b, 4, 39)
    expectRefused(b, .badLayout, at: 4)
  }

  @Test func bytesPastTotalSizeAreIgnored() throws {
    let tree = try FlattenedDeviceTree(bytes: Raw.good + [0xff, 0xff, 0xff])
    #expect(tree.nodeCount == 2)
  }

  @Test func badVersions() {
    var b = Raw.good
    Raw.set32(&b, 20, 15)
    expectRefused(b, .badVersion, at: 20)
    b = Raw.good
    Raw.set32(&b, 24, 18)
    expectRefused(b, .badVersion, at: 24)
    // Older than its own last compatible version (fdt_check_header).
    b = Raw.good
    Raw.set32(&b, 20, 16)
    Raw.set32(&b, 24, 17)
    expectRefused(b, .badVersion, at: 20)
  }

  // MARK: Blocks

  @Test func blocksOutOfRange() {
    var b = Raw.good
    Raw.set32(&b, 8, 156)
    expectRefused(b, .badLayout, at: 8)
    b = Raw.good
    Raw.set32(&b, 8, 0)
    expectRefused(b, .badLayout, at: 8)
    b = Raw.good
    Raw.set32(&b, 36, 0xffff_ffff)
    expectRefused(b, .badLayout, at: 8)
    b = Raw.good
    Raw.set32(&b, 12, 200)
    expectRefused(b, .badLayout, at: 12)
    b = Raw.good
    Raw.set32(&b, 32, 0xffff_ffff)  // dtc's ovf_size_strings
    expectRefused(b, .badLayout, at: 12)
    b = Raw.good
    Raw.set32(&b, 32, 16)
    expectRefused(b, .badLayout, at: 12)
    b = Raw.good
    Raw.set32(&b, 16, 8)
    expectRefused(b, .badLayout, at: 16)
    b = Raw.good
    Raw.set32(&b, 16, 0xffff_fff0)
    expectRefused(b, .badLayout, at: 16)
  }

  @Test func overlappingBlocks() {
    var b = Raw.good
    Raw.set32(&b, 12, 72)  // strings inside the structure block
    expectRefused(b, .badLayout, at: 12)
    b = Raw.good
    Raw.set32(&b, 16, 72)  // reservation map over the structure block
    expectRefused(b, .badLayout, at: 72)
  }

  @Test func misalignedOffsets() {
    var b = Raw.good
    Raw.set32(&b, 8, 74)
    expectRefused(b, .badLayout, at: 8)
    b = Raw.good
    Raw.set32(&b, 16, 44)
    expectRefused(b, .badLayout, at: 16)
  }

  /// dtc's truncated_memrsv: the map runs to the end without a terminator.
  @Test func unterminatedReservationMap() {
    let structure = Raw.begin("") + Raw.tokens(Raw.endNode, Raw.end)
    let b = Raw.assemble(
      reservations: [(0x1234_5678, 0x1000)], terminated: false, structure: structure,
      strings: [], order: "tsm")
    // header 40, structure 40..<56, strings empty, map at 56, entry, end 72.
    #expect(b.count == 72)
    expectRefused(b, .truncated, at: 72)
  }

  /// libfdt's fdt_num_mem_rsv and dtc stop at the first entry of size 0,
  /// whatever its address.
  @Test func reservationMapEndsAtSizeZero() throws {
    let structure = Raw.begin("") + Raw.tokens(Raw.endNode, Raw.end)
    let b = Raw.assemble(
      reservations: [(0x1000, 0x10), (0x2000, 0), (0x3000, 0x30)], structure: structure,
      strings: [])
    let tree = try FlattenedDeviceTree(bytes: b)
    #expect(tree.reservations == [MemoryReservation(address: 0x1000, size: 0x10)])
    let zeroAddress = Raw.assemble(reservations: [(0, 0x10)], structure: structure, strings: [])
    #expect(
      try FlattenedDeviceTree(bytes: zeroAddress).reservations == [
        MemoryReservation(address: 0, size: 0x10)
      ])
  }

  /// dtc's mangle-layout: every block order, versions 16 (no structure
  /// size: the block ends at FDT_END) and 17.
  @Test(arguments: ["mts", "mst", "tms", "tsm", "smt", "stm"], [UInt32(16), 17])
  func mangledBlockOrders(order: String, version: UInt32) throws {
    let structure =
      Raw.begin("") + Raw.property(4, 0, Raw.tokens(7)) + Raw.begin("a@1")
      + Raw.property(0, 2) + Raw.tokens(Raw.endNode, Raw.endNode, Raw.end)
    let b = Raw.assemble(
      reservations: [(0x1000, 0x2000)], structure: structure, strings: Array("p\0q\0".utf8),
      version: version, order: order)
    let tree = try FlattenedDeviceTree(bytes: b)
    #expect(tree.nodeCount == 2 && tree.propertyCount == 2)
    #expect(tree.reservations.count == 1)
    #expect(tree.root.property("p")?.cells == [7])
    #expect(tree.node(atPath: "/a")?.property("q") != nil)
  }

  // MARK: Structure

  @Test func unknownToken() {
    var b = Raw.good
    Raw.set32(&b, 128, 7)
    expectRefused(b, .badStructure, at: 128)
  }

  /// dtc's two_roots.
  @Test func twoRoots() {
    let b = Raw.tree(
      Raw.begin("") + Raw.tokens(Raw.endNode) + Raw.begin("") + Raw.tokens(Raw.endNode, Raw.end))
    expectRefused(b, .badStructure, at: 68)
  }

  /// dtc's named_root.
  @Test func namedRoot() {
    expectRefused(
      Raw.tree(Raw.begin("fake") + Raw.tokens(Raw.endNode, Raw.end)), .badStructure, at: 60)
  }

  @Test func endNodeWithoutNode() {
    let b = Raw.tree(Raw.tokens(Raw.endNode) + Raw.begin("") + Raw.tokens(Raw.endNode, Raw.end))
    expectRefused(b, .badStructure, at: 56)
  }

  @Test func propertyOutsideNode() {
    let b = Raw.tree(Raw.property(0, 0) + Raw.begin("") + Raw.tokens(Raw.endNode, Raw.end))
    expectRefused(b, .badStructure, at: 56)
    let after = Raw.tree(
      Raw.begin("") + Raw.tokens(Raw.endNode) + Raw.property(0, 0) + Raw.tokens(Raw.end))
    expectRefused(after, .badStructure, at: 68)
  }

  @Test func propertyAfterSubnode() {
    let b = Raw.tree(
      Raw.begin("") + Raw.begin("a") + Raw.tokens(Raw.endNode) + Raw.property(0, 0)
        + Raw.tokens(Raw.endNode, Raw.end))
    expectRefused(b, .badStructure, at: 76)
  }

  @Test func endWithNodesOpen() {
    let b = Raw.tree(Raw.begin("") + Raw.begin("a") + Raw.tokens(Raw.endNode, Raw.end))
    expectRefused(b, .badStructure, at: 76)
  }

  @Test func endBeforeAnyNode() {
    expectRefused(Raw.tree(Raw.tokens(Raw.end)), .badStructure, at: 56)
  }

  @Test func missingEnd() {
    expectRefused(Raw.tree(Raw.begin("") + Raw.tokens(Raw.endNode)), .truncated, at: 68)
    expectRefused(Raw.tree([]), .truncated, at: 56)
  }

  @Test func unterminatedNodeName() {
    expectRefused(Raw.tree(Raw.tokens(Raw.beginNode) + Array("abcd".utf8)), .truncated, at: 60)
  }

  /// dtc's truncated_property: a 4-byte value with no bytes before the end.
  @Test func truncatedProperty() {
    expectRefused(
      Raw.tree(Raw.begin("") + Raw.tokens(Raw.prop, 4, 0)), .truncated, at: 76)
    expectRefused(Raw.tree(Raw.begin("") + Raw.tokens(Raw.prop, 4)), .truncated, at: 68)
  }

  @Test func valueLengthOverflow() {
    let b = Raw.tree(Raw.begin("") + Raw.tokens(Raw.prop, 0xffff_ffff, 0, Raw.endNode, Raw.end))
    expectRefused(b, .truncated, at: 76)
    let big = Raw.tree(Raw.begin("") + Raw.tokens(Raw.prop, 0x8000_0000, 0, Raw.endNode, Raw.end))
    expectRefused(big, .truncated, at: 76)
  }

  @Test func nopsAreAllowedAnywhere() throws {
    let b = Raw.tree(
      Raw.tokens(Raw.nop) + Raw.begin("") + Raw.tokens(Raw.nop) + Raw.property(0, 0)
        + Raw.tokens(Raw.nop) + Raw.begin("a") + Raw.tokens(Raw.nop, Raw.endNode, Raw.nop)
        + Raw.tokens(Raw.endNode, Raw.nop, Raw.end))
    let tree = try FlattenedDeviceTree(bytes: b)
    #expect(tree.nodeCount == 2 && tree.propertyCount == 1)
    #expect(tree.root.properties.map(\.name) == ["x"])
    #expect(tree.root.children.map(\.name) == ["a"])
  }

  // MARK: Names

  /// dtc's bad_node_char.
  @Test func badNodeCharacter() {
    let b = Raw.tree(
      Raw.begin("") + Raw.begin("sub$node") + Raw.tokens(Raw.endNode, Raw.endNode, Raw.end))
    expectRefused(b, .badName, at: 71)
    let high = Raw.tree(
      Raw.begin("") + Raw.begin("caf\u{e9}") + Raw.tokens(Raw.endNode, Raw.endNode, Raw.end))
    expectRefused(high, .badName, at: 71)
  }

  /// dtc's bad_node_format.
  @Test func twoAtSigns() {
    let b = Raw.tree(
      Raw.begin("") + Raw.begin("subnode@1@2") + Raw.tokens(Raw.endNode, Raw.endNode, Raw.end))
    expectRefused(b, .badName, at: 68)
  }

  @Test func emptyNodeName() {
    let b = Raw.tree(Raw.begin("") + Raw.begin("") + Raw.tokens(Raw.endNode, Raw.endNode, Raw.end))
    expectRefused(b, .badName, at: 68)
  }

  /// dtc's bad_prop_char.
  @Test func badPropertyCharacter() {
    let b = Raw.tree(
      Raw.begin("") + Raw.property(4, 0, Raw.tokens(1)) + Raw.tokens(Raw.endNode, Raw.end),
      strings: Array("prop$erty\0".utf8))
    // structure 56..<88, strings at 88: '$' at 92.
    expectRefused(b, .badName, at: 92)
  }

  @Test func emptyPropertyName() {
    let b = Raw.tree(
      Raw.begin("") + Raw.property(0, 0) + Raw.tokens(Raw.endNode, Raw.end),
      strings: Array("\0x\0".utf8))
    // structure 56..<84, strings at 84.
    expectRefused(b, .badName, at: 84)
  }

  @Test func nameOffsetOutsideStrings() {
    let b = Raw.tree(
      Raw.begin("") + Raw.property(0, 2) + Raw.tokens(Raw.endNode, Raw.end))
    expectRefused(b, .badString, at: 72)
    // dtc's ovf_size_strings offset, with a sane size.
    let huge = Raw.tree(
      Raw.begin("") + Raw.property(0, 0x1000_0000) + Raw.tokens(Raw.endNode, Raw.end))
    expectRefused(huge, .badString, at: 72)
  }

  /// dtc's truncated_string: the last name has no NUL inside the block.
  @Test func unterminatedString() {
    let b = Raw.tree(
      Raw.begin("") + Raw.property(0, 0) + Raw.property(0, 5)
        + Raw.tokens(Raw.endNode, Raw.end),
      strings: Array("good\0bad".utf8))
    // structure 56..<96; strings at 96; "bad" at 101.
    expectRefused(b, .badString, at: 101)
  }

  // MARK: Robustness

  /// Single bit flips and 32-bit smashes of the reference blob: every
  /// outcome is a tree or a typed error (a crash would end the test run).
  @Test func mutationsNeverCrash() {
    var rng = SplitMix(seed: 42)
    var accepted = 0
    for bit in 0..<(Raw.good.count * 8) {
      var b = Raw.good
      b[bit / 8] ^= UInt8(1 << (bit % 8))
      if let tree = try? FlattenedDeviceTree(bytes: b) {
        accepted += 1
        _ = tree.sourceBytes
      }
    }
    let words: [UInt32] = [0, 1, 2, 3, 4, 9, 0xffff_ffff, 0x8000_0000, 0x7fff_ffff]
    for at in stride(from: 0, to: Raw.good.count - 3, by: 1) {
      for word in words + [UInt32(truncatingIfNeeded: rng.next())] {
        var b = Raw.good
        Raw.set32(&b, at, word)
        if let tree = try? FlattenedDeviceTree(bytes: b) {
          accepted += 1
          _ = tree.sourceBytes
          _ = try? tree.rewritten(layout: .dtc)
        }
      }
    }
    #expect(accepted > 0)
  }
}

struct SplitMix {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9e37_79b9_7f4a_7c15
    var z = state
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    return z ^ (z >> 31)
  }
}
