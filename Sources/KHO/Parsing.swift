// The kernel's number and boolean parsers, byte for byte: `memparse`
// (lib/cmdline.c), `simple_strtoull` (lib/vsprintf.c), `kstrtoull` and
// `kstrtobool` (lib/kstrtox.c). The input is treated as the kernel sees a
// sysfs buffer: a C string, so a NUL byte ends it.

import KHOSystem

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The kernel's parsers, as functions on bytes.
public enum KernelParsing {
  /// The kernel's `memparse`: an unsigned number in base 0 (as
  /// `simple_strtoull`), then an optional suffix `K k M m G g T t P p E e`,
  /// each one a further factor of 1024 (E → P → T → G → M → K).
  ///
  /// Like the kernel it never fails: no digits give 0, overflow wraps, and
  /// what follows the number (and suffix) is returned as `rest`.
  ///
  /// ```swift
  /// KernelParsing.memparse("512M").value  // 0x2000_0000
  /// ```
  public static func memparse(_ text: some StringProtocol) -> (value: UInt64, rest: Substring) {
    let bytes = cString(text)
    var (value, end) = simpleStrtoull(bytes, base: 0)
    if end < bytes.count, let shift = suffixShift(bytes[end]) {
      // The kernel's switch falls through from the suffix down to K, each
      // step shifting by 10; bits shifted out are lost, as in C.
      value = shift >= 64 ? 0 : value << UInt64(shift)
      end += 1
    }
    return (value, rest(of: text, droppingUTF8: end))
  }

  /// The kernel's `kstrtobool`: `1 y Y t T` are true, `0 n N f F` false,
  /// `o`/`O` followed by `n`/`N` true and by `f`/`F` false; only the first
  /// one or two characters count ("yes please" is true).
  ///
  /// - Throws: `Errno/invalidArgument`` for anything else, the empty
  ///   string included.
  public static func kstrtobool(_ text: some StringProtocol) throws(Errno) -> Bool {
    try kstrtobool(bytes: Array(text.utf8))
  }

  /// ``kstrtobool(_:)`` on raw bytes, as a sysfs store receives them; a NUL
  /// ends the input.
  public static func kstrtobool(bytes input: [UInt8]) throws(Errno) -> Bool {
    let bytes = input.prefix { $0 != 0 }
    switch bytes.first {
    case UInt8(ascii: "1"), UInt8(ascii: "y"), UInt8(ascii: "Y"), UInt8(ascii: "t"),
      UInt8(ascii: "T"):
      return true
    case UInt8(ascii: "0"), UInt8(ascii: "n"), UInt8(ascii: "N"), UInt8(ascii: "f"),
      UInt8(ascii: "F"):
      return false
    case UInt8(ascii: "o"), UInt8(ascii: "O"):
      switch bytes.dropFirst().first {
      case UInt8(ascii: "n"), UInt8(ascii: "N"): return true
      case UInt8(ascii: "f"), UInt8(ascii: "F"): return false
      default: throw .invalidArgument
      }
    default:
      throw .invalidArgument
    }
  }

  /// The kernel's `kstrtoull`: one optional leading `+`, then a number in
  /// `base` (0: `0x`/`0X` hex, leading `0` octal, else decimal), then at most
  /// one `"\n"` and nothing else. No `-`, no whitespace.
  ///
  /// - Parameters:
  ///   - text: the input.
  ///   - base: 0, or a base from 2 to 16.
  /// - Throws: `Errno/outOfRange`` when the number does not fit in 64
  ///   bits, `Errno/invalidArgument`` for anything else that is wrong.
  public static func kstrtoull(_ text: some StringProtocol, base: UInt32 = 0) throws(Errno)
    -> UInt64
  {
    try kstrtoull(bytes: Array(text.utf8), base: base)
  }

  /// ``kstrtoull(_:base:)`` on raw bytes, as a sysfs store receives them; a
  /// NUL ends the input.
  public static func kstrtoull(bytes input: [UInt8], base: UInt32 = 0) throws(Errno) -> UInt64 {
    precondition(base == 0 || (2...16).contains(base), "base must be 0 or 2...16")
    var bytes = input.prefix { $0 != 0 }
    if bytes.first == UInt8(ascii: "+") { bytes = bytes.dropFirst() }
    var radix = base
    let start = fixupRadix(bytes, &radix)
    let parsed = parseInteger(bytes[start...], base: radix)
    if parsed.overflow { throw .outOfRange }
    if parsed.digits == 0 { throw .invalidArgument }
    var end = start + parsed.digits
    if end < bytes.endIndex, bytes[end] == UInt8(ascii: "\n") { end += 1 }
    if end != bytes.endIndex { throw .invalidArgument }
    return parsed.value
  }

  /// The kernel's `simple_strtoull`: never fails, wraps on overflow.
  ///
  /// - Returns: the value and the index in `bytes` where parsing stopped.
  static func simpleStrtoull(_ bytes: [UInt8], base: UInt32) -> (UInt64, Int) {
    var radix = base
    let start = fixupRadix(bytes[...], &radix)
    let parsed = parseInteger(bytes[start...], base: radix)
    return (parsed.value, start + parsed.digits)
  }

  /// `_parse_integer_fixup_radix`: picks the base for base 0 and skips a
  /// `0x` prefix. Base 0 means hex only when a hex digit follows the `x`;
  /// "0x" alone is the octal number 0 followed by "x".
  ///
  /// - Returns: the index of the first digit.
  static func fixupRadix(_ bytes: ArraySlice<UInt8>, _ base: inout UInt32) -> Int {
    let s0 = byte(bytes, 0)
    let s1 = byte(bytes, 1) | 0x20  // _tolower, enough for comparing with 'x'
    if base == 0 {
      if s0 == UInt8(ascii: "0") {
        base = (s1 == UInt8(ascii: "x") && isHexDigit(byte(bytes, 2))) ? 16 : 8
      } else {
        base = 10
      }
    }
    if base == 16 && s0 == UInt8(ascii: "0") && s1 == UInt8(ascii: "x") {
      return bytes.startIndex + 2
    }
    return bytes.startIndex
  }

  /// `_parse_integer`: digits of `base` from the start of `bytes`.
  /// Overflow is reported but the value keeps wrapping, as in C.
  static func parseInteger(_ bytes: ArraySlice<UInt8>, base: UInt32)
    -> (value: UInt64, digits: Int, overflow: Bool)
  {
    var value: UInt64 = 0
    var digits = 0
    var overflow = false
    for c in bytes {
      guard let digit = digitValue(c), digit < base else { break }
      let (product, o1) = value.multipliedReportingOverflow(by: UInt64(base))
      let (sum, o2) = product.addingReportingOverflow(UInt64(digit))
      overflow = overflow || o1 || o2
      value = sum
      digits += 1
    }
    return (value, digits, overflow)
  }

  private static func digitValue(_ c: UInt8) -> UInt32? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return UInt32(c - UInt8(ascii: "0"))
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return UInt32(c - UInt8(ascii: "a") + 10)
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return UInt32(c - UInt8(ascii: "A") + 10)
    default: return nil
    }
  }

  private static func isHexDigit(_ c: UInt8) -> Bool { digitValue(c) != nil }

  private static func byte(_ bytes: ArraySlice<UInt8>, _ i: Int) -> UInt8 {
    let index = bytes.startIndex + i
    return index < bytes.endIndex ? bytes[index] : 0
  }

  /// The number of bits `memparse` shifts for a suffix, or nil for none.
  private static func suffixShift(_ c: UInt8) -> Int? {
    switch c | 0x20 {
    case UInt8(ascii: "k"): return 10
    case UInt8(ascii: "m"): return 20
    case UInt8(ascii: "g"): return 30
    case UInt8(ascii: "t"): return 40
    case UInt8(ascii: "p"): return 50
    case UInt8(ascii: "e"): return 60
    default: return nil
    }
  }

  /// The bytes the kernel would see: up to the first NUL.
  static func cString(_ text: some StringProtocol) -> [UInt8] {
    Array(text.utf8.prefix { $0 != 0 })
  }

  private static func rest(of text: some StringProtocol, droppingUTF8 count: Int) -> Substring {
    let s = Substring(text)
    let index = s.utf8.index(s.utf8.startIndex, offsetBy: count)
    // The parsed prefix is ASCII, so `index` is a character boundary.
    return s[index...]
  }
}

/// The `kho_scratch` parameter: the size of the scratch region.
public enum ScratchParameter {
  /// The environment variable read by ``size(option:environment:)``.
  public static let environmentName = "KHO_SCRATCH"
  /// The name on a kernel-style command line, as in `kho_scratch=512M`.
  public static let parameterName = "kho_scratch"

  /// The scratch size from an option's value (`--kho-scratch 512M`), else
  /// from `KHO_SCRATCH`, else 0 as in the seed. Like `early_kho_scratch`,
  /// anything after the number and suffix is ignored.
  ///
  /// - Parameters:
  ///   - option: the option's value, when given.
  ///   - environment: a lookup for environment variables; the process's
  ///     environment by default.
  public static func size(
    option: String?,
    environment: (String) -> String? = { getenv($0).map { String(cString: $0) } }
  ) -> UInt64 {
    if let option { return KernelParsing.memparse(option).value }
    if let value = environment(environmentName) { return KernelParsing.memparse(value).value }
    return 0
  }

  /// The scratch size from a kernel-style command line
  /// (`"quiet kho_scratch=1G"`): the last `kho_scratch=` wins, as each
  /// early parameter overwrites the one before; 0 when absent.
  public static func size(commandLine: String) -> UInt64 {
    var size: UInt64 = 0
    for word in commandLine.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }) {
      let prefix = parameterName + "="
      if word.hasPrefix(prefix) {
        size = KernelParsing.memparse(word.dropFirst(prefix.count)).value
      }
    }
    return size
  }
}
