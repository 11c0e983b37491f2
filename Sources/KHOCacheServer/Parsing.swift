#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// memcached's tokenizer: tokens are separated by spaces only (not tabs),
/// empty tokens are skipped. Ranges index into the line.
///
/// The first `inlineCapacity` ranges are kept in place, so that tokenizing
/// a command allocates nothing; only a longer line (a multi-get of many
/// keys) puts the rest in an array. A line comes from a `ByteBuffer`, so
/// its offsets fit in 32 bits.
struct Tokens {
  static let inlineCapacity = 8
  /// Ranges 0..<8 as `start << 32 | end`.
  private var inline: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) =
    (0, 0, 0, 0, 0, 0, 0, 0)
  /// Ranges from `inlineCapacity` on.
  private var overflow: [Range<Int>] = []
  private(set) var count = 0

  init(_ line: UnsafeRawBufferPointer) {
    var start = 0
    for index in 0..<line.count where line[index] == UInt8(ascii: " ") {
      if index > start { append(start, index) }
      start = index + 1
    }
    if line.count > start { append(start, line.count) }
  }

  private mutating func append(_ start: Int, _ end: Int) {
    if count < Self.inlineCapacity {
      let packed = UInt64(truncatingIfNeeded: start) << 32 | UInt64(truncatingIfNeeded: end)
      withUnsafeMutableBytes(of: &inline) {
        $0.storeBytes(of: packed, toByteOffset: count * 8, as: UInt64.self)
      }
    } else {
      overflow.append(start..<end)
    }
    count += 1
  }

  /// memcached's `ntokens`: at most 23 real tokens are counted, plus the
  /// terminal one, which is what its WANT_TOKENS checks compare against.
  var memcachedCount: Int { min(count, 23) + 1 }

  subscript(_ index: Int) -> Range<Int> {
    precondition(index >= 0 && index < count, "token index out of range")
    guard index < Self.inlineCapacity else { return overflow[index - Self.inlineCapacity] }
    let packed = withUnsafeBytes(of: inline) {
      $0.load(fromByteOffset: index * 8, as: UInt64.self)
    }
    return Int(packed >> 32)..<Int(packed & 0xffff_ffff)
  }
}

extension UnsafeRawBufferPointer {
  @inline(__always) func slice(_ range: Range<Int>) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(rebasing: self[range])
  }

  /// The offset of the first `byte`, found with memchr (a byte-at-a-time
  /// loop over every line and data block was a visible share of a
  /// request's cost).
  @inline(__always) func firstIndex(ofByte byte: UInt8) -> Int? {
    guard let base = baseAddress, count > 0 else { return nil }
    guard let found = memchr(base, Int32(byte), count) else { return nil }
    return base.distance(to: UnsafeRawPointer(found))
  }

  @inline(__always) func equals(_ literal: StaticString) -> Bool {
    guard count == literal.utf8CodeUnitCount else { return false }
    return memcmp(baseAddress!, literal.utf8Start, count) == 0
  }

  @inline(__always) func hasPrefix(_ literal: StaticString) -> Bool {
    guard count >= literal.utf8CodeUnitCount else { return false }
    return memcmp(baseAddress!, literal.utf8Start, literal.utf8CodeUnitCount) == 0
  }
}

/// strtol/strtoull as memcached's safe_strto* use them: leading white
/// space, a sign, at least one digit, then the end or white space. The
/// magnitude saturates to nil on 64-bit overflow (ERANGE).
struct ParsedNumber {
  var negative: Bool
  var magnitude: UInt64

  init?(_ bytes: UnsafeRawBufferPointer) {
    var index = 0
    while index < bytes.count && isSpaceByte(bytes[index]) { index += 1 }
    negative = false
    if index < bytes.count
      && (bytes[index] == UInt8(ascii: "-") || bytes[index] == UInt8(ascii: "+"))
    {
      negative = bytes[index] == UInt8(ascii: "-")
      index += 1
    }
    let start = index
    magnitude = 0
    while index < bytes.count, bytes[index] >= 48, bytes[index] <= 57 {
      let (times10, o1) = magnitude.multipliedReportingOverflow(by: 10)
      let (sum, o2) = times10.addingReportingOverflow(UInt64(bytes[index] - 48))
      if o1 || o2 { return nil }
      magnitude = sum
      index += 1
    }
    guard index > start, index == bytes.count || isSpaceByte(bytes[index]) else { return nil }
  }
}

/// safe_strtoull: unsigned 64; a minus sign is refused (but "-0" is 0).
func parseUInt64(_ bytes: UnsafeRawBufferPointer) -> UInt64? {
  guard let number = ParsedNumber(bytes) else { return nil }
  if number.negative && number.magnitude != 0 { return nil }
  return number.magnitude
}

/// safe_strtoul into a uint32_t: parsed as unsigned long (64-bit here),
/// then truncated, as memcached's cast does.
func parseUInt32Truncating(_ bytes: UnsafeRawBufferPointer) -> UInt32? {
  parseUInt64(bytes).map { UInt32(truncatingIfNeeded: $0) }
}

/// safe_strtol into an int32_t: parsed as long (64-bit here, ERANGE past
/// it), then truncated, as memcached's cast does.
func parseInt32Truncating(_ bytes: UnsafeRawBufferPointer) -> Int32? {
  guard let number = ParsedNumber(bytes) else { return nil }
  let limit: UInt64 = number.negative ? 1 << 63 : UInt64(Int64.max)
  guard number.magnitude <= limit else { return nil }
  let value = number.negative ? 0 &- Int64(bitPattern: number.magnitude) : Int64(number.magnitude)
  return Int32(truncatingIfNeeded: value)
}

@inline(__always) func isSpaceByte(_ byte: UInt8) -> Bool {
  byte == 32 || (byte >= 9 && byte <= 13)
}

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif
