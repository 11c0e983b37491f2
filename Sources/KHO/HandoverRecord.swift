import KHOSystem

/// The handover record: what the next image needs to find the blob and the
/// mem cache, the role of x86's `setup_data` `kho_data` or arm64's `/chosen`
/// properties. It sits at the start of scratch, followed by the mem cache
/// and the blob; the next image learns where from one environment variable,
/// ``HandoverRecord/environmentName``.
///
/// Layout (native-endian, 128 bytes):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | magic `"KHOHAND\0"` |
/// | 8 | 4 | version (1) |
/// | 12 | 4 | record size (128) |
/// | 16 | 8 | arena size |
/// | 24 | 8 | page size |
/// | 32 | 8 | generation (0 for a cold start, +1 per handover) |
/// | 40 | 8 | scratch address |
/// | 48 | 8 | scratch size |
/// | 56 | 8 | blob address |
/// | 64 | 8 | blob size |
/// | 72 | 8 | mem cache address |
/// | 80 | 8 | mem cache entries (16 bytes each) |
/// | 88 | 8 | FNV-1a 64 over bytes 0..<88, the mem cache and the blob |
/// | 96 | 32 | zero |
public struct HandoverRecord: Sendable, Equatable {
  public static let magic: UInt64 = 0x0044_4e41_484f_484b  // "KHOHAND\0" in memory order
  public static let version: UInt32 = 1
  public static let size = 128
  static let checksumOffset = 88

  /// The environment variable that tells the next image where the record
  /// is: `KHO_HANDOVER=v1,fd=N,size=0xARENA,record=0xOFFSET`.
  public static let environmentName = "KHO_HANDOVER"

  public var arenaSize: UInt64
  public var pageSize: UInt64
  public var generation: UInt64
  public var scratch: Range<UInt64>
  public var blob: Range<UInt64>
  public var memCacheAddress: UInt64
  public var memCacheCount: UInt64
  public var checksum: UInt64 = 0

  public init(
    arenaSize: UInt64, pageSize: UInt64, generation: UInt64, scratch: Range<UInt64>,
    blob: Range<UInt64>, memCacheAddress: UInt64, memCacheCount: UInt64
  ) {
    self.arenaSize = arenaSize
    self.pageSize = pageSize
    self.generation = generation
    self.scratch = scratch
    self.blob = blob
    self.memCacheAddress = memCacheAddress
    self.memCacheCount = memCacheCount
  }

  /// The record's bytes, checksum included as stored.
  func encoded() -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: Self.size)
    bytes.withUnsafeMutableBytes { raw in
      raw.storeBytes(of: Self.magic, toByteOffset: 0, as: UInt64.self)
      raw.storeBytes(of: Self.version, toByteOffset: 8, as: UInt32.self)
      raw.storeBytes(of: UInt32(Self.size), toByteOffset: 12, as: UInt32.self)
      let fields: [UInt64] = [
        arenaSize, pageSize, generation,
        scratch.lowerBound, scratch.length,
        blob.lowerBound, blob.length,
        memCacheAddress, memCacheCount, checksum,
      ]
      for (i, value) in fields.enumerated() {
        raw.storeBytes(of: value, toByteOffset: 16 + i * 8, as: UInt64.self)
      }
    }
    return bytes
  }

  /// Decodes a record, checking only what decoding needs: magic, version,
  /// size and that the ranges do not overflow. Placement is checked by
  /// ``validate(arenaSize:pageSize:)``.
  static func decode(_ raw: UnsafeRawBufferPointer) throws(HandoverError) -> HandoverRecord {
    guard raw.count >= size else {
      throw .badRecord("record of \(raw.count) bytes is shorter than \(size)")
    }
    let magic = raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
    guard magic == Self.magic else {
      throw .badRecord("bad magic 0x\(String(magic, radix: 16))")
    }
    let version = raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
    guard version == Self.version else {
      throw .badRecord("version \(version) is not the supported version \(Self.version)")
    }
    let recordSize = raw.loadUnaligned(fromByteOffset: 12, as: UInt32.self)
    guard recordSize == UInt32(Self.size) else {
      throw .badRecord("record size \(recordSize) is not \(Self.size)")
    }
    func field(_ i: Int) -> UInt64 {
      raw.loadUnaligned(fromByteOffset: 16 + i * 8, as: UInt64.self)
    }
    func range(_ start: UInt64, _ count: UInt64, _ what: String) throws(HandoverError) -> Range<
      UInt64
    > {
      let (end, overflow) = start.addingReportingOverflow(count)
      guard !overflow else {
        throw .badRecord(
          "\(what) 0x\(String(start, radix: 16))+0x\(String(count, radix: 16)) overflows")
      }
      return start..<end
    }
    var record = HandoverRecord(
      arenaSize: field(0), pageSize: field(1), generation: field(2),
      scratch: try range(field(3), field(4), "scratch"),
      blob: try range(field(5), field(6), "blob"),
      memCacheAddress: field(7), memCacheCount: field(8))
    record.checksum = field(9)
    return record
  }

  /// The mem cache's place in the arena, or an error if its size overflows.
  func memCacheRange() throws(HandoverError) -> Range<UInt64> {
    let (bytes, o1) = memCacheCount.multipliedReportingOverflow(
      by: UInt64(KHOMemoryRange.encodedSize))
    let (end, o2) = memCacheAddress.addingReportingOverflow(bytes)
    guard !o1, !o2 else { throw .badRecord("mem cache of \(memCacheCount) entries overflows") }
    return memCacheAddress..<end
  }

  /// Checks that everything the record points at lies where it must: the
  /// arena as stated, scratch inside it and page-aligned, blob and mem cache
  /// inside scratch.
  func validate(arenaSize: UInt64, pageSize: UInt64) throws(HandoverError) {
    guard self.arenaSize == arenaSize else {
      throw .badRecord(
        "record says the arena has 0x\(String(self.arenaSize, radix: 16)) bytes, the fd has 0x\(String(arenaSize, radix: 16))"
      )
    }
    guard self.pageSize == pageSize else {
      throw .badRecord(
        "record says page size 0x\(String(self.pageSize, radix: 16)), the arena has 0x\(String(pageSize, radix: 16))"
      )
    }
    guard scratch.upperBound <= arenaSize, scratch.lowerBound % pageSize == 0,
      scratch.length % pageSize == 0, !scratch.isEmpty
    else {
      throw .badRecord("scratch \(scratch) is not a page-aligned range inside the arena")
    }
    let cache = try memCacheRange()
    for (what, r) in [("blob", blob), ("mem cache", cache)] {
      guard r.lowerBound >= scratch.lowerBound, r.upperBound <= scratch.upperBound else {
        throw .badRecord("\(what) \(r) is not inside scratch \(scratch)")
      }
    }
  }
}

/// FNV-1a, 64-bit: a checksum against corruption, not an adversary.
struct FNV1a64 {
  private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

  mutating func update(_ bytes: UnsafeRawBufferPointer) {
    var h = value
    for b in bytes {
      h ^= UInt64(b)
      h = h &* 0x0000_0100_0000_01b3
    }
    value = h
  }
}

/// Why an incoming handover was not trusted. The next image logs it and
/// starts cold.
public enum HandoverError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The environment variable is malformed.
  case badEnvironment(String)
  /// The inherited fd is missing, not a memfd or of the wrong size.
  case badArenaFD(String)
  /// The record is missing, corrupt or points outside where it must.
  case badRecord(String)
  /// The mem cache is malformed or overlaps scratch or leaves the arena.
  case badMemCache(MemCacheError)
  /// The blob is not a valid FDT, or not `kho-v1`.
  case badBlob(String)
  /// The scratch region is too small for the record, mem cache and blob.
  case scratchTooSmall(needed: UInt64, available: UInt64)

  public var description: String {
    switch self {
    case .badEnvironment(let s): return "bad \(HandoverRecord.environmentName): \(s)"
    case .badArenaFD(let s): return "bad arena fd: \(s)"
    case .badRecord(let s): return "bad handover record: \(s)"
    case .badMemCache(let e): return "bad mem cache: \(e)"
    case .badBlob(let s): return "bad KHO blob: \(s)"
    case .scratchTooSmall(let needed, let available):
      return
        "scratch of 0x\(String(available, radix: 16)) bytes cannot hold the handover (0x\(String(needed, radix: 16)) bytes needed)"
    }
  }
}

/// The value of ``HandoverRecord/environmentName``.
public struct HandoverLocation: Sendable, Equatable, CustomStringConvertible {
  public var fd: Int32
  public var arenaSize: UInt64
  public var recordAddress: UInt64

  public init(fd: Int32, arenaSize: UInt64, recordAddress: UInt64) {
    self.fd = fd
    self.arenaSize = arenaSize
    self.recordAddress = recordAddress
  }

  /// `v1,fd=N,size=0xARENA,record=0xOFFSET`
  public var description: String {
    "v1,fd=\(fd),size=0x\(String(arenaSize, radix: 16)),record=0x\(String(recordAddress, radix: 16))"
  }

  /// Parses the variable's value; every field is required, nothing else is
  /// allowed.
  public init(parsing text: String) throws(HandoverError) {
    let parts = text.split(separator: ",", omittingEmptySubsequences: false)
    guard parts.first == "v1" else {
      throw .badEnvironment("\"\(text)\" does not start with the version v1")
    }
    var fields: [Substring: Substring] = [:]
    for part in parts.dropFirst() {
      guard let eq = part.firstIndex(of: "="), fields[part[..<eq]] == nil else {
        throw .badEnvironment("\"\(part)\" is not a key=value field")
      }
      fields[part[..<eq]] = part[part.index(after: eq)...]
    }
    guard fields.count == 3, let fd = fields["fd"].flatMap({ Int32($0) }), fd >= 0,
      let size = fields["size"].flatMap(Self.hex), let record = fields["record"].flatMap(Self.hex)
    else {
      throw .badEnvironment("\"\(text)\" needs exactly fd=N,size=0x...,record=0x...")
    }
    self.init(fd: fd, arenaSize: size, recordAddress: record)
  }

  private static func hex(_ s: Substring) -> UInt64? {
    guard s.hasPrefix("0x") else { return nil }
    return UInt64(s.dropFirst(2), radix: 16)
  }
}

extension Range where Bound == UInt64 {
  /// The number of bytes in the range. (`count` is an `Int` and traps
  /// above `Int.max`.)
  var length: UInt64 { upperBound - lowerBound }
}
