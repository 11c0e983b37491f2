// The byte layout of a flattened device tree, as the Devicetree
// Specification (chapter 5) and libfdt's `fdt.h` define it. Every multi-byte
// field of the format is big-endian.

/// Constants of the flattened device tree format.
public enum FDTFormat {
  /// The magic number at offset 0 of every blob, `0xd00dfeed`.
  public static let magic: UInt32 = 0xd00d_feed
  /// The version this library writes.
  public static let version: UInt32 = 17
  /// The oldest version a version-17 blob stays compatible with.
  public static let lastCompatibleVersion: UInt32 = 16
  /// The size of a version-17 header.
  public static let headerSize = 40
  /// The size of one memory reservation entry: two big-endian `u64`.
  public static let reservationEntrySize = 16
  /// Alignment of the structure block's tokens and property values.
  public static let tokenAlignment = 4
  /// Alignment of the memory reservation block.
  public static let reservationAlignment = 8
  /// The size of a token (`FDT_BEGIN_NODE`, `FDT_PROP`...): one big-endian
  /// `u32`.
  public static let tokenSize = 4
  /// An `FDT_PROP` token and its header: the token, the value's length
  /// (at ``propertyLengthOffset``), the name's offset in the strings block
  /// (at ``propertyNameOffset``); the value follows.
  public static let propertyHeaderSize = 12
  /// Where the value's length is, from the `FDT_PROP` token.
  public static let propertyLengthOffset = 4
  /// Where the name's offset in the strings block is, from the `FDT_PROP` token.
  public static let propertyNameOffset = 8

  /// Where a node's properties and subnodes start, given the offset of the
  /// NUL that ends its name: past the NUL, aligned.
  @inlinable @inline(__always)
  static func nodeContentOffset(nameNUL: Int) -> Int { alignUp4(nameNUL + 1) }

  /// The token after the `FDT_PROP` at `offset` whose value has `length`
  /// bytes: past the header and the value, aligned.
  @inlinable @inline(__always)
  static func offsetAfterProperty(at offset: Int, length: Int) -> Int {
    alignUp4(offset + propertyHeaderSize + length)
  }
}

/// The tokens of the structure block.
public enum FDTToken: UInt32, Sendable {
  case beginNode = 0x1
  case endNode = 0x2
  case property = 0x3
  case nop = 0x4
  case end = 0x9
}

/// The header's fields, at their byte offsets.
enum HeaderField: Int {
  case magic = 0
  case totalSize = 4
  case structOffset = 8
  case stringsOffset = 12
  case reservationOffset = 16
  case version = 20
  case lastCompatibleVersion = 24
  case bootCPUID = 28
  case stringsSize = 32
  case structSize = 36
}

/// The header of a blob, decoded.
public struct FDTHeader: Sendable, Equatable {
  /// ``FDTFormat/magic``, `0xd00dfeed`.
  public var magic: UInt32
  /// The blob's size, in bytes.
  public var totalSize: UInt32
  /// Where the structure block starts.
  public var structOffset: UInt32
  /// Where the strings block starts.
  public var stringsOffset: UInt32
  /// Where the memory reservation block starts.
  public var reservationOffset: UInt32
  /// The format's version, 17.
  public var version: UInt32
  /// The oldest version this blob stays compatible with, 16.
  public var lastCompatibleVersion: UInt32
  /// The physical id of the boot CPU.
  public var bootCPUID: UInt32
  /// The strings block's size, in bytes.
  public var stringsSize: UInt32
  /// The structure block's size, in bytes.
  public var structSize: UInt32
}

/// One entry of the memory reservation block.
public struct MemoryReservation: Sendable, Equatable, Hashable {
  /// The first byte reserved.
  public var address: UInt64
  /// How many bytes are reserved.
  public var size: UInt64

  /// A reservation of `size` bytes from `address`.
  public init(address: UInt64, size: UInt64) {
    self.address = address
    self.size = size
  }
}

@inline(__always)
func alignUp(_ value: Int, _ alignment: Int) -> Int {
  (value + alignment - 1) & ~(alignment - 1)
}

// Characters dtc accepts in names (its `NODECHARS` and `PROPCHARS`), as
// 128-bit membership masks over ASCII.
enum NameCharacters {
  static let node = mask(",._+-@")
  static let property = mask(",._+*#?-")

  private static func mask(_ punctuation: String) -> (UInt64, UInt64) {
    var low: UInt64 = 0
    var high: UInt64 = 0
    func set(_ c: UInt8) {
      if c < 64 { low |= 1 << UInt64(c) } else { high |= 1 << UInt64(c - 64) }
    }
    for c in UInt8(ascii: "a")...UInt8(ascii: "z") { set(c) }
    for c in UInt8(ascii: "A")...UInt8(ascii: "Z") { set(c) }
    for c in UInt8(ascii: "0")...UInt8(ascii: "9") { set(c) }
    for c in punctuation.utf8 { set(c) }
    return (low, high)
  }

  @inline(__always)
  static func contains(_ mask: (UInt64, UInt64), _ c: UInt8) -> Bool {
    if c < 64 { return mask.0 & (1 << UInt64(c)) != 0 }
    if c < 128 { return mask.1 & (1 << UInt64(c - 64)) != 0 }
    return false
  }
}
