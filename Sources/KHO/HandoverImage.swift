import FDT
import KHOSystem

/// What one image leaves in scratch for the next, and how the next reads it
/// back: the handover record at the start of scratch, then the mem cache,
/// then the blob. Both directions work on the arena's mapping as raw bytes,
/// so they can be tested without processes.
public enum HandoverImage {
  /// Lays out record, mem cache and blob at the start of `scratch`.
  ///
  /// - Returns: the record as written; it sits at `scratch.lowerBound`.
  /// - Throws: ``HandoverError/scratchTooSmall(needed:available:)``.
  public static func write(
    blob: [UInt8], memCache: MemCache, generation: UInt64,
    into arena: UnsafeMutableRawBufferPointer, pageSize: UInt64, scratch: Range<UInt64>
  ) throws(HandoverError) -> HandoverRecord {
    let cacheBytes = memCache.encoded
    let cacheAt = scratch.lowerBound + UInt64(HandoverRecord.size)
    let blobAt = alignUp(cacheAt + UInt64(cacheBytes.count), 8)
    let end = blobAt + UInt64(blob.count)
    guard end <= scratch.upperBound else {
      throw .scratchTooSmall(needed: end - scratch.lowerBound, available: scratch.length)
    }
    var record = HandoverRecord(
      arenaSize: UInt64(arena.count), pageSize: pageSize, generation: generation,
      scratch: scratch, blob: blobAt..<end, memCacheAddress: cacheAt,
      memCacheCount: UInt64(memCache.ranges.count))
    copy(cacheBytes, to: arena, at: cacheAt)
    copy(blob, to: arena, at: blobAt)
    record.checksum = checksum(of: record, in: UnsafeRawBufferPointer(arena))
    copy(record.encoded(), to: arena, at: scratch.lowerBound)
    return record
  }

  /// Everything the previous image handed over, validated.
  public struct Incoming: Sendable {
    /// The record, checked to point inside scratch.
    public let record: HandoverRecord
    /// The mem cache, every range checked.
    public let memCache: MemCache
    /// The blob, copied out of scratch (the next serialize reuses scratch).
    public let tree: FlattenedDeviceTree
  }

  /// Reads and validates what the previous image left, trusting nothing:
  /// the record's magic, version and placement, its checksum, the mem cache
  /// (page-aligned, sorted, inside the arena, outside scratch) and the blob
  /// (full FDT validation, root `compatible = "kho-v1"`).
  public static func read(
    recordAddress: UInt64, arena: UnsafeRawBufferPointer, pageSize: UInt64
  ) throws(HandoverError) -> Incoming {
    let arenaSize = UInt64(arena.count)
    guard recordAddress <= arenaSize, arenaSize - recordAddress >= UInt64(HandoverRecord.size)
    else {
      throw .badRecord("record address 0x\(String(recordAddress, radix: 16)) is outside the arena")
    }
    let at = Int(recordAddress)
    let record = try HandoverRecord.decode(
      UnsafeRawBufferPointer(rebasing: arena[at..<at + HandoverRecord.size]))
    try record.validate(arenaSize: arenaSize, pageSize: pageSize)
    guard record.scratch.lowerBound == recordAddress else {
      throw .badRecord(
        "record at 0x\(String(recordAddress, radix: 16)) is not at the start of its scratch \(record.scratch)"
      )
    }
    let sum = checksum(of: record, in: arena)
    guard sum == record.checksum else {
      throw .badRecord(
        "checksum 0x\(String(record.checksum, radix: 16)) does not match the contents (0x\(String(sum, radix: 16)))"
      )
    }
    let memCache: MemCache
    let ranges = MemCache.decode(slice(arena, try record.memCacheRange()))
    do throws(MemCacheError) {
      memCache = try MemCache(
        validating: ranges, pageSize: pageSize, arenaSize: arenaSize, scratch: record.scratch)
    } catch {
      throw .badMemCache(error)
    }
    let tree: FlattenedDeviceTree
    do throws(FDTError) {
      tree = try FlattenedDeviceTree(bytes: Array(slice(arena, record.blob)))
    } catch {
      throw .badBlob("\(error)")
    }
    guard tree.root.property("compatible")?.string == "kho-v1" else {
      let found = tree.root.property("compatible")?.strings?.joined(separator: ", ") ?? "none"
      throw .badBlob("root compatible is \"\(found)\", expected \"kho-v1\"")
    }
    return Incoming(record: record, memCache: memCache, tree: tree)
  }

  /// Rewrites the checksum of the record at `recordAddress` to match what
  /// is in scratch now. For tools and tests that edit a handover on purpose
  /// (to check that the next image refuses what the checksum no longer
  /// catches); a service never needs it.
  public static func reseal(recordAddress: UInt64, in arena: UnsafeMutableRawBufferPointer)
    throws(HandoverError)
  {
    let at = Int(recordAddress)
    guard at >= 0, at + HandoverRecord.size <= arena.count else {
      throw .badRecord("record outside the arena")
    }
    let record = try HandoverRecord.decode(
      UnsafeRawBufferPointer(rebasing: arena[at..<at + HandoverRecord.size]))
    try record.validate(arenaSize: UInt64(arena.count), pageSize: record.pageSize)
    let sum = checksum(of: record, in: UnsafeRawBufferPointer(arena))
    arena.storeBytes(of: sum, toByteOffset: at + HandoverRecord.Field.checksum, as: UInt64.self)
  }

  /// FNV-1a over the record's first 88 bytes, the mem cache and the blob.
  static func checksum(of record: HandoverRecord, in arena: UnsafeRawBufferPointer) -> UInt64 {
    var hash = FNV1a64()
    var withoutSum = record
    withoutSum.checksum = 0
    withoutSum.encoded().withUnsafeBytes {
      hash.update(UnsafeRawBufferPointer(rebasing: $0[..<HandoverRecord.Field.checksum]))
    }
    // Placement was validated (or chosen) by the caller: both are inside scratch.
    if let cache = try? record.memCacheRange() { hash.update(slice(arena, cache)) }
    hash.update(slice(arena, record.blob))
    return hash.value
  }

  private static func slice(_ arena: UnsafeRawBufferPointer, _ r: Range<UInt64>)
    -> UnsafeRawBufferPointer
  {
    UnsafeRawBufferPointer(rebasing: arena[Int(r.lowerBound)..<Int(r.upperBound)])
  }

  private static func copy(_ bytes: [UInt8], to arena: UnsafeMutableRawBufferPointer, at: UInt64) {
    bytes.withUnsafeBytes { src in
      UnsafeMutableRawBufferPointer(rebasing: arena[Int(at)..<Int(at) + src.count]).copyMemory(
        from: src)
    }
  }

  private static func alignUp(_ v: UInt64, _ a: UInt64) -> UInt64 { (v + a - 1) & ~(a - 1) }
}
