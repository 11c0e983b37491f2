import Testing

@testable import KHO

@Suite struct MemparseTests {
  static let cases: [(String, UInt64, String)] = [
    ("0", 0, ""),
    ("", 0, ""),
    ("512M", 0x2000_0000, ""),
    ("512m", 0x2000_0000, ""),
    ("1K", 1024, ""),
    ("1k", 1024, ""),
    ("1G", 1 << 30, ""),
    ("1g", 1 << 30, ""),
    ("1T", 1 << 40, ""),
    ("1t", 1 << 40, ""),
    ("1P", 1 << 50, ""),
    ("1p", 1 << 50, ""),
    ("1E", 1 << 60, ""),
    ("1e", 1 << 60, ""),
    ("16E", 0, ""),  // shifted out, as in C
    ("0x10", 16, ""),
    ("0x10K", 16 << 10, ""),
    ("010", 8, ""),
    ("010M", 8 << 20, ""),
    ("0x", 0, "x"),  // no hex digit after x: octal 0, then "x"
    ("08", 0, "8"),  // 8 is not octal
    ("12Q", 12, "Q"),
    ("1KB", 1024, "B"),
    ("1 G", 1, " G"),
    ("-1", 0, "-1"),  // simple_strtoull takes no sign
    ("18446744073709551616", 0, ""),  // 2^64 wraps
    ("0xffffffffffffffff", UInt64.max, ""),
    ("3M,rest", 3 << 20, ",rest"),
  ]

  @Test(arguments: cases)
  func memparse(input: String, value: UInt64, rest: String) {
    let result = KernelParsing.memparse(input)
    #expect(result.value == value)
    #expect(result.rest == rest)
  }
}

@Suite struct KstrtoboolTests {
  @Test(arguments: [
    ("1", true), ("y", true), ("Y", true), ("t", true), ("T", true),
    ("0", false), ("n", false), ("N", false), ("f", false), ("F", false),
    ("on", true), ("ON", true), ("On", true), ("oN", true),
    ("off", false), ("OFF", false), ("of", false), ("oF", false),
    ("1\n", true), ("0\n", false), ("yes please", true), ("no", false),
    ("true", true), ("false", false), ("10", true),
  ])
  func accepts(input: String, value: Bool) throws {
    #expect(try KernelParsing.kstrtobool(input) == value)
  }

  @Test(arguments: ["", "\n", "2", "o", "O", "ox", "o\n", " 1", "-1", "+1", "x", "\u{0}1", "Ja"])
  func rejects(input: String) {
    #expect(throws: Errno.invalidArgument) { try KernelParsing.kstrtobool(input) }
  }

  @Test func bytesStopAtNUL() throws {
    #expect(try KernelParsing.kstrtobool(bytes: [UInt8(ascii: "1"), 0, 0xff]) == true)
    #expect(throws: Errno.invalidArgument) { try KernelParsing.kstrtobool(bytes: [0, 0x31]) }
  }
}

@Suite struct KstrtoullTests {
  @Test(arguments: [
    ("0", UInt64(0)), ("1", 1), ("1\n", 1), ("+1", 1), ("+0x10", 16),
    ("0x10", 16), ("0X10", 16), ("0xA", 10), ("0xa", 10), ("0xaBcD\n", 0xabcd),
    ("010", 8), ("0777", 0o777), ("00", 0), ("10485760", 0xa0_0000),
    ("0xa00000\n", 0xa0_0000),
    ("18446744073709551615", UInt64.max), ("0xffffffffffffffff", UInt64.max),
    ("01777777777777777777777", UInt64.max),
    ("000000000000000000000000000001", 1),
  ])
  func accepts(input: String, value: UInt64) throws {
    #expect(try KernelParsing.kstrtoull(input) == value)
  }

  @Test(arguments: [
    "", "\n", "+", "++1", "-1", "-0", " 1", "1 ", "\t1", "1\n\n", "1\r\n", "0x", "0x\n", "0xg",
    "08", "09", "1a", "abc", "1K", "0b101", "1.5", "\n1",
  ])
  func invalid(input: String) {
    #expect(throws: Errno.invalidArgument) { try KernelParsing.kstrtoull(input) }
  }

  @Test(arguments: [
    "18446744073709551616", "0x10000000000000000", "02000000000000000000000",
    "99999999999999999999999", "18446744073709551616x",
  ])
  func overflow(input: String) {
    // The kernel reports overflow before looking at what follows.
    #expect(throws: Errno.outOfRange) { try KernelParsing.kstrtoull(input) }
  }

  @Test func explicitBase() throws {
    #expect(try KernelParsing.kstrtoull("ff", base: 16) == 255)
    #expect(try KernelParsing.kstrtoull("0xff", base: 16) == 255)
    #expect(try KernelParsing.kstrtoull("010", base: 10) == 10)
    #expect(throws: Errno.invalidArgument) { try KernelParsing.kstrtoull("0x10", base: 10) }
  }

  @Test func bytesStopAtNUL() throws {
    #expect(try KernelParsing.kstrtoull(bytes: Array("12\n".utf8) + [0, 0x41]) == 12)
  }
}

@Suite struct ScratchParameterTests {
  @Test func optionWinsOverEnvironment() {
    let env = { (name: String) -> String? in name == "KHO_SCRATCH" ? "1G" : nil }
    #expect(ScratchParameter.size(option: "512M", environment: env) == 0x2000_0000)
    #expect(ScratchParameter.size(option: nil, environment: env) == 1 << 30)
    #expect(ScratchParameter.size(option: nil, environment: { _ in nil }) == 0)
  }

  @Test func trailingGarbageIgnoredAsTheKernelDoes() {
    #expect(ScratchParameter.size(option: "64Mfoo", environment: { _ in nil }) == 64 << 20)
  }

  @Test func commandLine() {
    #expect(ScratchParameter.size(commandLine: "quiet kho_scratch=512M ro") == 0x2000_0000)
    #expect(ScratchParameter.size(commandLine: "kho_scratch=1M kho_scratch=2M") == 2 << 20)
    #expect(ScratchParameter.size(commandLine: "quiet xkho_scratch=1M") == 0)
    #expect(ScratchParameter.size(commandLine: "") == 0)
  }
}
