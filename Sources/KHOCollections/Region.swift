import CKHOChecksum

#if canImport(Glibc)
  import Glibc
#endif

/// The bytes a collection lives in, with the loads and stores its layout
/// needs. Offsets are relative to the start, so the region can be mapped
/// anywhere (or copied into a bigger one) with no fix-up.
struct Region {
  let base: UnsafeMutableRawPointer
  let count: Int

  init(_ bytes: UnsafeMutableRawBufferPointer) {
    base = bytes.baseAddress ?? UnsafeMutableRawPointer(bitPattern: 8)!
    count = bytes.count
  }

  @inline(__always) func load64(_ at: Int) -> UInt64 {
    (base + at).loadUnaligned(as: UInt64.self)
  }
  @inline(__always) func store64(_ value: UInt64, _ at: Int) {
    (base + at).storeBytes(of: value, as: UInt64.self)
  }
  @inline(__always) func load32(_ at: Int) -> UInt32 {
    (base + at).loadUnaligned(as: UInt32.self)
  }
  @inline(__always) func store32(_ value: UInt32, _ at: Int) {
    (base + at).storeBytes(of: value, as: UInt32.self)
  }
  @inline(__always) func load16(_ at: Int) -> UInt16 {
    (base + at).loadUnaligned(as: UInt16.self)
  }
  @inline(__always) func store16(_ value: UInt16, _ at: Int) {
    (base + at).storeBytes(of: value, as: UInt16.self)
  }
  @inline(__always) func load8(_ at: Int) -> UInt8 {
    (base + at).load(as: UInt8.self)
  }
  @inline(__always) func store8(_ value: UInt8, _ at: Int) {
    (base + at).storeBytes(of: value, as: UInt8.self)
  }
  @inline(__always) func bytes(_ at: Int, _ length: Int) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(start: base + at, count: length)
  }
  @inline(__always) func copy(_ source: UnsafeRawBufferPointer, to at: Int) {
    guard let from = source.baseAddress, source.count > 0 else { return }
    (base + at).copyMemory(from: from, byteCount: source.count)
  }
  @inline(__always) func crc(_ at: Int, _ length: Int, continuing crc: UInt32 = 0) -> UInt32 {
    ckho_crc32c(crc, base + at, length)
  }
}

/// Brent's cycle detection for one walk of a linked list: O(1) space, and
/// a loop is found within about twice (tail + cycle) steps, so long chains
/// are never mistaken for damage.
struct CycleGuard {
  private var saved = 0
  private var power = 1
  private var steps = 0

  /// Whether `node` was met before in this walk (nodes are never 0).
  @inline(__always) mutating func hasLooped(_ node: Int) -> Bool {
    if node == saved { return true }
    steps &+= 1
    if steps == power {
      saved = node
      power &<<= 1
      steps = 0
    }
    return false
  }
}

/// Why a region was refused: its header does not describe a collection
/// this version can use. Nothing past the header is trusted before these
/// checks pass.
public enum ArenaAttachError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The region is smaller than the collection's header or layout.
  case tooSmall(needed: Int, have: Int)
  /// The first word is not the collection's magic.
  case badMagic(UInt64)
  /// A version this image does not read.
  case unsupportedVersion(UInt32)
  /// A header field out of its range.
  case badHeader(String)

  public var description: String {
    switch self {
    case .tooSmall(let needed, let have): return "region of \(have) bytes, \(needed) needed"
    case .badMagic(let magic): return "bad magic 0x\(String(magic, radix: 16))"
    case .unsupportedVersion(let version): return "unsupported version \(version)"
    case .badHeader(let why): return "bad header: \(why)"
    }
  }
}

/// The wall clock in seconds, the default clock of expiry times: expiry times must mean the same in the next
/// image, so they are not a monotonic clock's (which restarts with a boot,
/// not with an exec, but is not guaranteed to share an epoch either).
public func wallClockSeconds() -> UInt64 {
  var now = timespec()
  clock_gettime(CLOCK_REALTIME, &now)
  return UInt64(max(0, now.tv_sec))
}

/// The smallest power of two at least `n` (1 for n <= 1).
func nextPowerOfTwo(_ n: Int) -> Int {
  n <= 1 ? 1 : 1 << (Int.bitWidth - (n - 1).leadingZeroBitCount)
}
