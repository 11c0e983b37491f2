import FDT
import KHOSystem

/// One preserved range, the kernel's `struct kho_mem { u64 addr; u64 len; }`.
///
/// Subsystems put arrays of these, native-endian, in a `mem` property of
/// their node; the addresses are arena offsets.
public struct KHOMemoryRange: Sendable, Hashable, Comparable, CustomStringConvertible {
  /// The first byte, page-aligned.
  public var address: UInt64
  /// The number of bytes, a multiple of the page size.
  public var length: UInt64

  /// The range of `length` bytes from `address`.
  public init(address: UInt64, length: UInt64) {
    self.address = address
    self.length = length
  }

  /// One past the last byte; callers check for overflow first.
  public var end: UInt64 { address + length }

  /// Ordered by address.
  public static func < (a: Self, b: Self) -> Bool {
    (a.address, a.length) < (b.address, b.length)
  }

  public var description: String {
    "0x\(String(address, radix: 16))+0x\(String(length, radix: 16))"
  }

  /// The size of one entry in a `mem` property and in the mem cache.
  public static let encodedSize = 16
}

/// Why a mem cache could not be built or trusted.
public struct MemCacheError: Error, Sendable, Equatable, CustomStringConvertible {
  /// What is wrong with a range.
  public enum Kind: Sendable, Equatable {
    /// A range that overflows or leaves the arena.
    case outsideArena
    /// A range that overlaps the scratch region.
    case overlapsScratch
    /// An incoming cache that is not sorted, overlaps itself or is not
    /// page-aligned.
    case malformed
  }

  /// What is wrong.
  public var kind: Kind
  /// The range it is wrong with.
  public var range: KHOMemoryRange
  /// The node whose `mem` property held the range, when known.
  public var node: String?

  public var description: String {
    let place = node.map { " in \($0)" } ?? ""
    switch kind {
    case .outsideArena: return "mem range \(range)\(place) leaves the arena"
    case .overlapsScratch: return "mem range \(range)\(place) overlaps scratch"
    case .malformed: return "mem cache entry \(range) is not page-aligned, sorted and disjoint"
    }
  }

  /// The errno the ABI reports for it, as kexec_file does: EINVAL.
  public var errno: Int32 { 22 }
}

/// The mem cache: every node's `mem` ranges, page-aligned, sorted and merged,
/// as kexec_file builds it for the next kernel.
public struct MemCache: Sendable, Equatable {
  /// Disjoint, page-aligned ranges in ascending order, none adjacent.
  public private(set) var ranges: [KHOMemoryRange]

  /// The total preserved bytes.
  public var totalBytes: UInt64 { ranges.reduce(0) { $0 + $1.length } }

  /// Warnings met while building (a `mem` property whose length is not a
  /// multiple of 16 is ignored, as the kernel does, with a warning).
  public private(set) var warnings: [String] = []

  /// Builds the cache from every node's `mem` property.
  ///
  /// - Parameters:
  ///   - tree: the serialized KHO blob.
  ///   - pageSize: the arena's page size, a power of two.
  ///   - arenaSize: the arena's size; every range must fit inside it.
  ///   - scratch: the scratch region; no range may overlap it.
  /// - Throws: ``MemCacheError`` for the first bad range; nothing is built.
  public init(
    tree: FlattenedDeviceTree, pageSize: UInt64, arenaSize: UInt64, scratch: Range<UInt64>
  ) throws(MemCacheError) {
    var collected: [KHOMemoryRange] = []
    var warnings: [String] = []
    var path: [String] = []
    var failure: MemCacheError?
    tree.walk { event in
      guard failure == nil else { return }
      switch event {
      case .beginNode(let node):
        path.append(node.name)
      case .endNode:
        path.removeLast()
      case .property(let property):
        guard property.name == "mem" else { return }
        let nodePath = path.count <= 1 ? "/" : path.joined(separator: "/")
        guard let words = property.native(UInt64.self), words.count % 2 == 0 else {
          warnings.append(
            "\(nodePath): mem property of \(property.value.count) bytes is not a multiple of 16; ignored"
          )
          return
        }
        for i in stride(from: 0, to: words.count, by: 2) {
          let range = KHOMemoryRange(address: words[i], length: words[i + 1])
          do throws(MemCacheError) {
            if let aligned = try Self.align(range, pageSize, arenaSize, scratch, nodePath) {
              collected.append(aligned)
            }
          } catch {
            failure = error
            return
          }
        }
      }
    }
    if let failure { throw failure }
    self.ranges = Self.sortAndMerge(collected)
    self.warnings = warnings
  }

  /// Adopts an incoming cache after checking it: page-aligned, inside the
  /// arena, outside scratch, sorted and disjoint.
  public init(
    validating ranges: [KHOMemoryRange], pageSize: UInt64, arenaSize: UInt64, scratch: Range<UInt64>
  ) throws(MemCacheError) {
    var previousEnd: UInt64 = 0
    for (i, r) in ranges.enumerated() {
      if r.length == 0 || r.address % pageSize != 0 || r.length % pageSize != 0
        || (i > 0 && r.address < previousEnd)
      {
        throw MemCacheError(kind: .malformed, range: r, node: nil)
      }
      try Self.checkPlacement(r, arenaSize, scratch, nil)
      previousEnd = r.end
    }
    self.ranges = ranges
  }

  /// Widens a range to whole pages and checks where it falls. Empty ranges
  /// carry nothing and are dropped.
  private static func align(
    _ range: KHOMemoryRange, _ pageSize: UInt64, _ arenaSize: UInt64, _ scratch: Range<UInt64>,
    _ node: String
  ) throws(MemCacheError) -> KHOMemoryRange? {
    guard range.length > 0 else { return nil }
    let (end, overflow) = range.address.addingReportingOverflow(range.length)
    guard !overflow, end <= arenaSize else {
      throw MemCacheError(kind: .outsideArena, range: range, node: node)
    }
    let start = range.address & ~(pageSize - 1)
    // `end <= arenaSize` and the arena is page-aligned, so this cannot overflow.
    let alignedEnd = (end + pageSize - 1) & ~(pageSize - 1)
    let aligned = KHOMemoryRange(address: start, length: alignedEnd - start)
    try checkPlacement(aligned, arenaSize, scratch, node)
    return aligned
  }

  private static func checkPlacement(
    _ r: KHOMemoryRange, _ arenaSize: UInt64, _ scratch: Range<UInt64>, _ node: String?
  ) throws(MemCacheError) {
    let (end, overflow) = r.address.addingReportingOverflow(r.length)
    if overflow || end > arenaSize {
      throw MemCacheError(kind: .outsideArena, range: r, node: node)
    }
    if !scratch.isEmpty && r.address < scratch.upperBound && scratch.lowerBound < end {
      throw MemCacheError(kind: .overlapsScratch, range: r, node: node)
    }
  }

  /// Sorts and merges overlapping and adjacent ranges.
  static func sortAndMerge(_ ranges: [KHOMemoryRange]) -> [KHOMemoryRange] {
    var merged: [KHOMemoryRange] = []
    merged.reserveCapacity(ranges.count)
    for r in ranges.sorted() {
      if let last = merged.last, r.address <= last.end {
        merged[merged.count - 1].length = max(last.end, r.end) - last.address
      } else {
        merged.append(r)
      }
    }
    return merged
  }

  /// The cache's bytes: `struct kho_mem` entries, native-endian.
  public var encoded: [UInt8] {
    var bytes: [UInt8] = []
    bytes.reserveCapacity(ranges.count * KHOMemoryRange.encodedSize)
    for r in ranges {
      withUnsafeBytes(of: r.address) { bytes.append(contentsOf: $0) }
      withUnsafeBytes(of: r.length) { bytes.append(contentsOf: $0) }
    }
    return bytes
  }

  /// Decodes `struct kho_mem` entries (no checks: use
  /// `init(validating:...)` on the result).
  public static func decode(_ raw: UnsafeRawBufferPointer) -> [KHOMemoryRange] {
    (0..<(raw.count / KHOMemoryRange.encodedSize)).map { i in
      let at = i * KHOMemoryRange.encodedSize
      return KHOMemoryRange(
        address: raw.loadUnaligned(fromByteOffset: at, as: UInt64.self),
        length: raw.loadUnaligned(fromByteOffset: at + 8, as: UInt64.self))
    }
  }
}
