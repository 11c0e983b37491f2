import KHOSystem

/// The handover record: what the next image needs to find the blob and the
/// mem cache, the role of x86's `setup_data` `kho_data` or arm64's `/chosen`
/// properties. It sits at the start of scratch, followed by the mem cache
/// and the blob; the next image learns where from one environment variable,
/// ``HandoverRecord/environmentName``.
///
/// Layout: native-endian, 128 bytes, the fields at the offsets
/// `HandoverRecord.Field` gives (the one place they are written down);
/// bytes 96..<128 are zero. The checksum is FNV-1a 64 over the bytes before
/// it, the mem cache and the blob.
public struct HandoverRecord: Sendable, Equatable {
  /// The record's first 8 bytes, `"KHOHAND\0"`.
  public static let magic: UInt64 = 0x0044_4e41_484f_484b  // "KHOHAND\0" in memory order
  /// The layout's version.
  public static let version: UInt32 = 1
  /// The record's size, in bytes.
  public static let size = 128

  /// Byte offsets of the record's fields; each is 8 bytes but `version` and
  /// `recordSize` (4).
  enum Field {
    /// `"KHOHAND\0"`.
    static let magic = 0
    /// The layout's version, 1.
    static let version = 8
    /// The record's size, 128.
    static let recordSize = 12
    static let arenaSize = 16
    static let pageSize = 24
    /// 0 for a cold start, +1 per handover.
    static let generation = 32
    static let scratchAddress = 40
    static let scratchSize = 48
    static let blobAddress = 56
    static let blobSize = 64
    static let memCacheAddress = 72
    /// Entries of ``KHOMemoryRange/encodedSize`` (16) bytes.
    static let memCacheCount = 80
    /// FNV-1a 64 over bytes `0..<checksum`, the mem cache and the blob.
    static let checksum = 88
  }

  /// The environment variable that tells the next image where the record
  /// is: `KHO_HANDOVER=v1,fd=N,size=0xARENA,record=0xOFFSET`.
  public static let environmentName = "KHO_HANDOVER"

  /// The arena's size, as the fd must have it.
  public var arenaSize: UInt64
  /// The arena's page size: 4 KiB or 2 MiB.
  public var pageSize: UInt64
  /// 0 after a cold start, one more per handover.
  public var generation: UInt64
  /// The scratch region, page-aligned, inside the arena.
  public var scratch: Range<UInt64>
  /// The FDT blob, inside scratch.
  public var blob: Range<UInt64>
  /// Where the mem cache starts, inside scratch.
  public var memCacheAddress: UInt64
  /// How many 16-byte entries the mem cache has.
  public var memCacheCount: UInt64
  /// FNV-1a 64 over the record before it, the mem cache and the blob.
  public var checksum: UInt64 = 0

  /// A record with these fields and no checksum yet.
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
      raw.storeBytes(of: Self.magic, toByteOffset: Field.magic, as: UInt64.self)
      raw.storeBytes(of: Self.version, toByteOffset: Field.version, as: UInt32.self)
      raw.storeBytes(of: UInt32(Self.size), toByteOffset: Field.recordSize, as: UInt32.self)
      let fields: [(Int, UInt64)] = [
        (Field.arenaSize, arenaSize), (Field.pageSize, pageSize),
        (Field.generation, generation),
        (Field.scratchAddress, scratch.lowerBound), (Field.scratchSize, scratch.length),
        (Field.blobAddress, blob.lowerBound), (Field.blobSize, blob.length),
        (Field.memCacheAddress, memCacheAddress), (Field.memCacheCount, memCacheCount),
        (Field.checksum, checksum),
      ]
      for (offset, value) in fields {
        raw.storeBytes(of: value, toByteOffset: offset, as: UInt64.self)
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
    let magic = raw.loadUnaligned(fromByteOffset: Field.magic, as: UInt64.self)
    guard magic == Self.magic else {
      throw .badRecord("bad magic 0x\(String(magic, radix: 16))")
    }
    let version = raw.loadUnaligned(fromByteOffset: Field.version, as: UInt32.self)
    guard version == Self.version else {
      throw .badRecord("version \(version) is not the supported version \(Self.version)")
    }
    let recordSize = raw.loadUnaligned(fromByteOffset: Field.recordSize, as: UInt32.self)
    guard recordSize == UInt32(Self.size) else {
      throw .badRecord("record size \(recordSize) is not \(Self.size)")
    }
    func field(_ offset: Int) -> UInt64 {
      raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
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
      arenaSize: field(Field.arenaSize), pageSize: field(Field.pageSize),
      generation: field(Field.generation),
      scratch: try range(field(Field.scratchAddress), field(Field.scratchSize), "scratch"),
      blob: try range(field(Field.blobAddress), field(Field.blobSize), "blob"),
      memCacheAddress: field(Field.memCacheAddress), memCacheCount: field(Field.memCacheCount))
    record.checksum = field(Field.checksum)
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
  /// The arena's fd, open in the next image.
  public var fd: Int32
  /// The arena's size, as the fd must have it.
  public var arenaSize: UInt64
  /// The record's offset in the arena.
  public var recordAddress: UInt64

  /// A record with these fields and no checksum yet.
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
