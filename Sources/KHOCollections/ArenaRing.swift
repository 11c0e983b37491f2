/// A ring buffer of variable-length records in one caller-given region: the
/// trace ring (`KHOExamples.TraceRing`) generalised to records of any
/// length. When full, the oldest records make room.
///
/// Layout (native-endian):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | magic `"KHOCRING"` |
/// | 8 | 4 | version (1) |
/// | 16 | 8 | data capacity in bytes (a multiple of 8) |
/// | 24 | 8 | position of the oldest record (bytes ever written before it) |
/// | 32 | 8 | position of the next record |
/// | 40 | 8 | records ever appended (the next sequence number) |
/// | 64 | capacity | records |
///
/// A record at position p lives at `64 + p % capacity`: `u32 length`,
/// `u32 crc32c` (of sequence and bytes), `u64 sequence`, the bytes padded
/// to 8. A record never wraps: a length of `0xFFFF_FFFF` means "skip to
/// the start".
///
/// **Never trusting the region**: positions are checked (head ≤ tail ≤
/// head + capacity) at attach; while reading, a record whose length runs
/// past the tail or whose CRC fails is skipped, and the walk finds the next
/// intact record 8 bytes at a time; each is counted in ``damage``. Every
/// walk moves forward and stops at the tail, so it is bounded.
///
/// **Growth across upgrades**: the data capacity is fixed by ``format(_:)``;
/// a later image that wants a bigger ring formats the bigger region and
/// appends the old ring's ``records(as:)`` into it (see the tests).
public final class ArenaRing {
  /// The string that names this layout in its FDT node.
  public static var compatible: String { "kho-collections,ring-v1" }
  /// The layout version this image writes and reads.
  public static var version: UInt32 { 1 }
  static var magic: UInt64 { 0x474e_4952_434f_484b }  // "KHOCRING"
  static var headerSize: Int { 64 }
  static var wrapMarker: UInt32 { 0xFFFF_FFFF }

  let region: Region
  /// Damage met while reading since this image attached.
  public private(set) var damage = 0

  private init(_ region: Region) { self.region = region }

  /// Formats `bytes` as an empty ring.
  public static func format(_ bytes: UnsafeMutableRawBufferPointer) throws(ArenaAttachError)
    -> ArenaRing
  {
    guard bytes.count >= headerSize + 64 else {
      throw .tooSmall(needed: headerSize + 64, have: bytes.count)
    }
    let ring = ArenaRing(Region(bytes))
    ring.region.base.initializeMemory(as: UInt8.self, repeating: 0, count: headerSize)
    ring.region.store64(magic, 0)
    ring.region.store32(version, 8)
    ring.region.store64(UInt64((bytes.count - headerSize) & ~7), 16)
    return ring
  }

  /// Attaches the ring the previous image left in `bytes` (O(1), header
  /// checked).
  public static func attach(_ bytes: UnsafeMutableRawBufferPointer) throws(ArenaAttachError)
    -> ArenaRing
  {
    guard bytes.count >= headerSize else { throw .tooSmall(needed: headerSize, have: bytes.count) }
    let ring = ArenaRing(Region(bytes))
    let r = ring.region
    guard r.load64(0) == magic else { throw .badMagic(r.load64(0)) }
    guard r.load32(8) == version else { throw .unsupportedVersion(r.load32(8)) }
    let capacity = r.load64(16)
    guard capacity >= 64, capacity % 8 == 0, capacity <= UInt64(bytes.count - headerSize) else {
      throw .badHeader("capacity \(capacity) for a region of \(bytes.count)")
    }
    let head = r.load64(24)
    let tail = r.load64(32)
    guard head <= tail, tail - head <= capacity, head % 8 == 0, tail % 8 == 0 else {
      throw .badHeader("positions \(head)..<\(tail)")
    }
    return ring
  }

  /// The bytes records can use.
  public var capacity: Int { Int(region.load64(16)) }
  /// Records ever appended; the sequence number of the next one.
  public var appended: UInt64 { region.load64(40) }
  private var head: UInt64 { region.load64(24) }
  private var tail: UInt64 { region.load64(32) }

  /// The largest record ``append(_:)-(UnsafeRawBufferPointer)`` takes.
  public var maxRecord: Int { capacity / 2 - 16 }

  /// Why an append was refused.
  public enum AppendError: Error, Sendable, Equatable {
    /// The record is longer than ``ArenaRing/maxRecord``.
    case tooLarge(Int)
  }

  /// Appends a record, dropping the oldest ones to make room.
  @discardableResult
  public func append(_ bytes: UnsafeRawBufferPointer) throws(AppendError) -> UInt64 {
    guard bytes.count <= maxRecord else { throw .tooLarge(bytes.count) }
    let needed = UInt64(16 + (bytes.count + 7) & ~7)
    var at = tail
    let room = UInt64(capacity) - at % UInt64(capacity)
    if room < needed {
      makeRoom(end: at + room)
      region.store32(Self.wrapMarker, Self.headerSize + Int(at % UInt64(capacity)))
      at += room
      region.store64(at, 32)
    }
    makeRoom(end: at + needed)
    let offset = Self.headerSize + Int(at % UInt64(capacity))
    let sequence = appended
    region.store32(UInt32(bytes.count), offset)
    region.store64(sequence, offset + 8)
    region.copy(bytes, to: offset + 16)
    region.store32(region.crc(offset + 8, 8 + bytes.count), offset + 4)
    region.store64(at + needed, 32)
    region.store64(sequence + 1, 40)
    return sequence
  }

  /// Appends the bytes of `value`.
  @discardableResult
  public func append(_ value: some ArenaCodable) throws(AppendError) -> UInt64 {
    let result: Result<UInt64, AppendError> = value.withArenaBytes { bytes in
      Result { () throws(AppendError) in try append(bytes) }
    }
    return try result.get()
  }

  /// Drops the oldest records until a tail at `end` fits; a record that
  /// cannot be stepped over (damage) drops all that is left.
  private func makeRoom(end: UInt64) {
    let capacity = UInt64(self.capacity)
    while end - head > capacity {
      guard head < tail else { return }
      guard let next = nextPosition(after: head) else {
        damage += 1
        region.store64(resync(after: head), 24)
        continue
      }
      region.store64(next, 24)
    }
  }

  /// Whether an intact record (its CRC matching) starts at `position`.
  private func isIntactRecord(at position: UInt64) -> Bool {
    let offset = Self.headerSize + Int(position % UInt64(capacity))
    let length = region.load32(offset)
    guard length != Self.wrapMarker, let next = nextPosition(after: position), next <= tail else {
      return false
    }
    return region.crc(offset + 8, 8 + Int(length)) == region.load32(offset + 4)
  }

  /// The first position after `position` where an intact record starts
  /// (8 bytes at a time; the CRC makes a false start all but impossible),
  /// or the tail: how a walk finds its way past damage.
  private func resync(after position: UInt64) -> UInt64 {
    var candidate = position + 8
    while candidate < tail, !isIntactRecord(at: candidate) { candidate += 8 }
    return min(candidate, tail)
  }

  /// The position after the record at `position`, or nil when its length
  /// runs past the tail (damage).
  private func nextPosition(after position: UInt64) -> UInt64? {
    let capacity = UInt64(self.capacity)
    let offset = Self.headerSize + Int(position % capacity)
    let length = region.load32(offset)
    if length == Self.wrapMarker {
      let next = position + capacity - position % capacity
      return next <= tail ? next : nil
    }
    let size = UInt64(16 + (Int(length) + 7) & ~7)
    guard size <= capacity - position % capacity, position + size <= tail else { return nil }
    return position + size
  }

  /// Calls `body` with each intact record, oldest first.
  public func forEach(_ body: (_ sequence: UInt64, _ bytes: UnsafeRawBufferPointer) throws -> Void)
    rethrows
  {
    var position = head
    while position < tail {
      let offset = Self.headerSize + Int(position % UInt64(capacity))
      let length = region.load32(offset)
      if length == Self.wrapMarker, let next = nextPosition(after: position) {
        position = next
      } else if isIntactRecord(at: position), let next = nextPosition(after: position) {
        try body(region.load64(offset + 8), region.bytes(offset + 16, Int(length)))
        position = next
      } else {
        damage += 1
        position = resync(after: position)
      }
    }
  }

  /// The intact records, oldest first, decoded as `T` (records that do not
  /// decode are left out).
  public func records<T: ArenaCodable>(as type: T.Type = [UInt8].self) -> [(
    sequence: UInt64, value: T
  )] {
    var out: [(UInt64, T)] = []
    forEach { sequence, bytes in
      if let value = T(arenaBytes: bytes) { out.append((sequence, value)) }
    }
    return out
  }
}
