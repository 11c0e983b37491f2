// One pass over a blob that establishes everything the accessors rely on,
// at the level of libfdt's `fdt_check_full` and a little beyond it (names,
// block overlap, property order). After it succeeds, reads through
// `FlattenedDeviceTree` never leave the blob.

/// Reads big-endian integers from a buffer whose bounds the caller checked.
@usableFromInline
struct TrustedBytes {
  @usableFromInline let base: UnsafeRawBufferPointer

  @inlinable @inline(__always)
  init(_ base: UnsafeRawBufferPointer) { self.base = base }

  @inlinable @inline(__always)
  func u32(_ at: Int) -> UInt32 {
    UInt32(bigEndian: base.loadUnaligned(fromByteOffset: at, as: UInt32.self))
  }

  @inlinable @inline(__always)
  func u64(_ at: Int) -> UInt64 {
    UInt64(bigEndian: base.loadUnaligned(fromByteOffset: at, as: UInt64.self))
  }

  @inlinable @inline(__always)
  func byte(_ at: Int) -> UInt8 { base[at] }

  /// The token at `offset` in a structure block ending at `end`, and the
  /// offset of the token after it: the one step every reader of the block
  /// takes, as libfdt's `fdt_next_tag`. It trusts what it reads (a node
  /// name's NUL, a property's length): call it on a validated tree, or, as
  /// the validator does, once the token's bytes are checked.
  @inlinable @inline(__always)
  func nextTag(at offset: Int, end: Int) -> (token: UInt32, next: Int) {
    let token = u32(offset)
    switch token {
    case FDTToken.beginNode.rawValue:
      let nameStart = offset + FDTFormat.tokenSize
      return (token, FDTFormat.nodeContentOffset(nameNUL: nul(from: nameStart, before: end) ?? end))
    case FDTToken.property.rawValue:
      let length = Int(u32(offset + FDTFormat.propertyLengthOffset))
      return (token, FDTFormat.offsetAfterProperty(at: offset, length: length))
    default:
      return (token, offset + FDTFormat.tokenSize)
    }
  }

  /// The index of the first NUL at or after `start` and before `end`, if any.
  @inlinable
  func nul(from start: Int, before end: Int) -> Int? {
    guard start < end else { return nil }
    let p = base.baseAddress! + start
    guard let hit = memchrCompat(p, end - start) else { return nil }
    return start + hit
  }
}

@usableFromInline @inline(__always)
func memchrCompat(_ p: UnsafeRawPointer, _ count: Int) -> Int? {
  let bytes = p.assumingMemoryBound(to: UInt8.self)
  // A word-at-a-time scan: names are short, but string tables and long
  // strings are not.
  var i = 0
  while i + 8 <= count {
    let word = UnalignedWord.load(p + i)
    let hasZero = (word &- 0x0101_0101_0101_0101) & ~word & 0x8080_8080_8080_8080
    if hasZero != 0 {
      return i + (hasZero.trailingZeroBitCount >> 3)
    }
    i += 8
  }
  while i < count {
    if bytes[i] == 0 { return i }
    i += 1
  }
  return nil
}

@usableFromInline
enum UnalignedWord {
  @inlinable @inline(__always)
  static func load(_ p: UnsafeRawPointer) -> UInt64 {
    UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
  }
}

/// The layout a validated blob was found to have.
@usableFromInline
struct ValidatedLayout: Sendable {
  var header: FDTHeader
  var reservationCount: Int
  /// Absolute bounds of the structure and strings blocks.
  @usableFromInline var structStart: Int
  @usableFromInline var structEnd: Int
  var stringsStart: Int
  var stringsEnd: Int
  var nodeCount: Int
  var propertyCount: Int
}

enum Validator {
  static func validate(_ raw: UnsafeRawBufferPointer) throws(FDTError) -> ValidatedLayout {
    let bytes = TrustedBytes(raw)
    let header = try checkHeader(raw.count, bytes)
    let total = Int(header.totalSize)
    let headerSize = header.version >= 17 ? FDTFormat.headerSize : 36

    let structStart = Int(header.structOffset)
    let structSize = header.version >= 17 ? Int(header.structSize) : total - structStart
    let stringsStart = Int(header.stringsOffset)
    let stringsSize = Int(header.stringsSize)
    try checkBlock(
      "structure", start: structStart, size: structSize, headerSize, total, HeaderField.structOffset
    )
    try checkBlock(
      "strings", start: stringsStart, size: stringsSize, headerSize, total,
      HeaderField.stringsOffset)
    if structStart % FDTFormat.tokenAlignment != 0 {
      throw FDTError(
        .badLayout, at: HeaderField.structOffset.rawValue,
        "structure block offset \(structStart) is not 4-byte aligned")
    }
    let structEnd = structStart + structSize
    let stringsEnd = stringsStart + stringsSize
    // A version-16 header has no structure size: the block ends at its
    // FDT_END token, so its overlaps are checked after the walk.
    let structSizeKnown = header.version >= 17
    if structSizeKnown {
      try checkOverlap(structStart, structEnd, stringsStart, stringsEnd)
    }

    let reservationCount = try checkReservations(
      bytes, header, headerSize: headerSize, total: total,
      blocks: structSizeKnown
        ? [(structStart, structEnd), (stringsStart, stringsEnd)] : [(stringsStart, stringsEnd)])
    var layout = ValidatedLayout(
      header: header, reservationCount: reservationCount,
      structStart: structStart, structEnd: structEnd,
      stringsStart: stringsStart, stringsEnd: stringsEnd,
      nodeCount: 0, propertyCount: 0)
    let endOfTokens = try checkStructure(bytes, &layout)
    if !structSizeKnown {
      layout.structEnd = endOfTokens
      try checkOverlap(structStart, endOfTokens, stringsStart, stringsEnd)
      let reservationStart = Int(header.reservationOffset)
      let reservationEnd =
        reservationStart + (reservationCount + 1) * FDTFormat.reservationEntrySize
      if structStart < reservationEnd && reservationStart < endOfTokens {
        throw FDTError(
          .badLayout, at: HeaderField.reservationOffset.rawValue,
          "memory reservation map \(reservationStart)..<\(reservationEnd) overlaps structure block \(structStart)..<\(endOfTokens)"
        )
      }
    }
    return layout
  }

  private static func checkOverlap(
    _ structStart: Int, _ structEnd: Int, _ stringsStart: Int, _ stringsEnd: Int
  ) throws(FDTError) {
    if structStart < structEnd && stringsStart < stringsEnd && structStart < stringsEnd
      && stringsStart < structEnd
    {
      throw FDTError(
        .badLayout, at: HeaderField.stringsOffset.rawValue,
        "strings block \(stringsStart)..<\(stringsEnd) overlaps structure block \(structStart)..<\(structEnd)"
      )
    }
  }

  private static func checkHeader(_ count: Int, _ bytes: TrustedBytes) throws(FDTError) -> FDTHeader
  {
    if count < 4 {
      throw FDTError(.truncated, at: 0, "blob of \(count) bytes has no room for the magic number")
    }
    let magic = bytes.u32(0)
    if magic != FDTFormat.magic {
      throw FDTError(.badMagic, at: 0, "magic is 0x\(hex(magic)), expected 0xd00dfeed")
    }
    if count < 36 {
      throw FDTError(.truncated, at: 0, "blob of \(count) bytes is shorter than a header")
    }
    let version = bytes.u32(HeaderField.version.rawValue)
    let lastCompatible = bytes.u32(HeaderField.lastCompatibleVersion.rawValue)
    if version < 16 {
      throw FDTError(
        .badVersion, at: HeaderField.version.rawValue,
        "version \(version) is older than 16, the oldest this reader handles")
    }
    if lastCompatible > FDTFormat.version {
      throw FDTError(
        .badVersion, at: HeaderField.lastCompatibleVersion.rawValue,
        "last compatible version \(lastCompatible) is newer than 17")
    }
    if version < lastCompatible {
      throw FDTError(
        .badVersion, at: HeaderField.version.rawValue,
        "version \(version) is older than its last compatible version \(lastCompatible)")
    }
    let headerSize = version >= 17 ? FDTFormat.headerSize : 36
    if count < headerSize {
      throw FDTError(
        .truncated, at: 0, "blob of \(count) bytes is shorter than a version-\(version) header")
    }
    let header = FDTHeader(
      magic: magic,
      totalSize: bytes.u32(HeaderField.totalSize.rawValue),
      structOffset: bytes.u32(HeaderField.structOffset.rawValue),
      stringsOffset: bytes.u32(HeaderField.stringsOffset.rawValue),
      reservationOffset: bytes.u32(HeaderField.reservationOffset.rawValue),
      version: version,
      lastCompatibleVersion: lastCompatible,
      bootCPUID: bytes.u32(HeaderField.bootCPUID.rawValue),
      stringsSize: bytes.u32(HeaderField.stringsSize.rawValue),
      structSize: version >= 17 ? bytes.u32(HeaderField.structSize.rawValue) : 0)
    if Int(header.totalSize) < headerSize {
      throw FDTError(
        .badLayout, at: HeaderField.totalSize.rawValue,
        "total size \(header.totalSize) is smaller than the header")
    }
    if Int(header.totalSize) > count {
      throw FDTError(
        .truncated, at: count,
        "blob of \(count) bytes is shorter than its total size \(header.totalSize)")
    }
    return header
  }

  private static func checkBlock(
    _ what: String, start: Int, size: Int, _ headerSize: Int, _ total: Int, _ field: HeaderField
  ) throws(FDTError) {
    if start < headerSize || start > total {
      throw FDTError(
        .badLayout, at: field.rawValue,
        "\(what) block offset \(start) is outside \(headerSize)...\(total)")
    }
    if size < 0 || size > total - start {
      throw FDTError(
        .badLayout, at: field.rawValue,
        "\(what) block of \(size) bytes at \(start) runs past the total size \(total)")
    }
  }

  private static func checkReservations(
    _ bytes: TrustedBytes, _ header: FDTHeader, headerSize: Int, total: Int,
    blocks: [(Int, Int)]
  ) throws(FDTError) -> Int {
    let start = Int(header.reservationOffset)
    if start < headerSize || start > total {
      throw FDTError(
        .badLayout, at: HeaderField.reservationOffset.rawValue,
        "memory reservation map offset \(start) is outside \(headerSize)...\(total)")
    }
    if start % FDTFormat.reservationAlignment != 0 {
      throw FDTError(
        .badLayout, at: HeaderField.reservationOffset.rawValue,
        "memory reservation map offset \(start) is not 8-byte aligned")
    }
    var at = start
    var count = 0
    while true {
      if total - at < FDTFormat.reservationEntrySize {
        throw FDTError(
          .truncated, at: at, "memory reservation map is not terminated before the end of the blob")
      }
      for (blockStart, blockEnd) in blocks where blockStart < blockEnd {
        if at < blockEnd && blockStart < at + FDTFormat.reservationEntrySize {
          throw FDTError(
            .badLayout, at: at,
            "memory reservation map runs into the block at \(blockStart)..<\(blockEnd)")
        }
      }
      let size = bytes.u64(at + 8)
      at += FDTFormat.reservationEntrySize
      // libfdt (fdt_num_mem_rsv) and dtc both end the map at the first
      // entry of size 0, whatever its address.
      if size == 0 { return count }
      count += 1
    }
  }

  /// Walks the tokens; returns the offset just past FDT_END.
  private static func checkStructure(_ bytes: TrustedBytes, _ layout: inout ValidatedLayout)
    throws(FDTError) -> Int
  {
    let end = layout.structEnd
    var at = layout.structStart
    var depth = 0
    var sawRoot = false
    // Whether the node at the current depth already had a subnode: a
    // property after a subnode breaks the format's order.
    var hadChild = false
    while true {
      if end - at < 4 {
        throw FDTError(.truncated, at: at, "structure block ends without FDT_END")
      }
      let tokenAt = at
      let token = bytes.u32(at)
      at += FDTFormat.tokenSize
      switch token {
      case FDTToken.beginNode.rawValue:
        if depth == 0 && sawRoot {
          throw FDTError(.badStructure, at: tokenAt, "a second root node")
        }
        guard let nul = bytes.nul(from: at, before: end) else {
          throw FDTError(.truncated, at: at, "node name runs past the structure block")
        }
        try checkNodeName(bytes, from: at, to: nul, isRoot: depth == 0)
        at = FDTFormat.nodeContentOffset(nameNUL: nul)
        if at > end {
          throw FDTError(.truncated, at: nul, "node name padding runs past the structure block")
        }
        depth += 1
        sawRoot = true
        hadChild = false
        layout.nodeCount += 1
      case FDTToken.endNode.rawValue:
        if depth == 0 {
          throw FDTError(.badStructure, at: tokenAt, "FDT_END_NODE without an open node")
        }
        depth -= 1
        hadChild = true
      case FDTToken.property.rawValue:
        if depth == 0 {
          throw FDTError(.badStructure, at: tokenAt, "property outside any node")
        }
        if hadChild {
          throw FDTError(.badStructure, at: tokenAt, "property after a subnode")
        }
        let valueStart = tokenAt + FDTFormat.propertyHeaderSize
        if end - tokenAt < FDTFormat.propertyHeaderSize {
          throw FDTError(.truncated, at: at, "property header runs past the structure block")
        }
        let length = Int(bytes.u32(tokenAt + FDTFormat.propertyLengthOffset))
        let nameOffset = Int(bytes.u32(tokenAt + FDTFormat.propertyNameOffset))
        try checkPropertyName(bytes, nameOffset, layout, tokenAt: tokenAt)
        if length > end - valueStart {
          throw FDTError(
            .truncated, at: valueStart,
            "property value of \(length) bytes runs past the structure block")
        }
        at = FDTFormat.offsetAfterProperty(at: tokenAt, length: length)
        if at > end {
          throw FDTError(.truncated, at: at - 4, "property padding runs past the structure block")
        }
        layout.propertyCount += 1
      case FDTToken.nop.rawValue:
        break
      case FDTToken.end.rawValue:
        if depth != 0 {
          throw FDTError(.badStructure, at: tokenAt, "FDT_END with \(depth) node(s) still open")
        }
        if !sawRoot {
          throw FDTError(.badStructure, at: tokenAt, "FDT_END before any node")
        }
        return at
      default:
        throw FDTError(.badStructure, at: tokenAt, "unknown token 0x\(hex(token))")
      }
    }
  }

  private static func checkNodeName(_ bytes: TrustedBytes, from: Int, to: Int, isRoot: Bool)
    throws(FDTError)
  {
    if isRoot {
      if to != from {
        throw FDTError(.badStructure, at: from, "the root node has a name; it must be empty")
      }
      return
    }
    if to == from {
      throw FDTError(.badName, at: from, "empty node name")
    }
    var ats = 0
    for i in from..<to {
      let c = bytes.byte(i)
      if !NameCharacters.contains(NameCharacters.node, c) {
        throw FDTError(.badName, at: i, "character 0x\(hex(c)) not allowed in a node name")
      }
      if c == UInt8(ascii: "@") { ats += 1 }
    }
    if ats > 1 {
      throw FDTError(.badName, at: from, "node name with more than one '@'")
    }
  }

  private static func checkPropertyName(
    _ bytes: TrustedBytes, _ nameOffset: Int, _ layout: ValidatedLayout, tokenAt: Int
  ) throws(FDTError) {
    let start = layout.stringsStart + nameOffset
    if nameOffset >= layout.stringsEnd - layout.stringsStart {
      throw FDTError(
        .badString, at: tokenAt + 8,
        "property name offset \(nameOffset) is outside the strings block of \(layout.stringsEnd - layout.stringsStart) bytes"
      )
    }
    guard let nul = bytes.nul(from: start, before: layout.stringsEnd) else {
      throw FDTError(
        .badString, at: start, "property name is not terminated inside the strings block")
    }
    if nul == start {
      throw FDTError(.badName, at: start, "empty property name")
    }
    for i in start..<nul {
      let c = bytes.byte(i)
      if !NameCharacters.contains(NameCharacters.property, c) {
        throw FDTError(.badName, at: i, "character 0x\(hex(c)) not allowed in a property name")
      }
    }
  }
}

func hex<T: BinaryInteger>(_ value: T) -> String {
  String(value, radix: 16)
}
