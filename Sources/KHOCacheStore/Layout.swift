// The byte layout of a cache region, format version 3 (2 had no meta
// protocol bits in byte 55 of the item header; 1 had no item checksum and a
// 56-byte item header).
//
// Everything inside the region is addressed by byte offsets from its base, so
// a process that maps the same memory at another address uses it as is. All
// multi-byte fields are native-endian and naturally aligned (every offset
// below is a multiple of its field's size, chunks are multiples of 8).
//
//   [0, headerSize)            header: geometry, counters, class table
//   [hashOffset, +8*buckets)   hash index: bucket heads (item offsets, 0 = empty)
//   [pageTableOffset, +pages)  one byte per slab page: its class id, 0 = unused
//   [slabOffset, +pages*page)  slab pages, each cut into chunks of one class
//
// Offset 0 is the header, so 0 never names an item: it means "none".

/// Offsets of the header fields.
enum Header {
  static let magic = 0  // 8 bytes "KHOCACHE"
  static let version = 8  // u32
  static let headerSize = 12  // u32
  static let regionSize = 16  // u64
  static let itemSizeMax = 24  // u64
  static let pageSize = 32  // u64
  static let bucketCount = 40  // u64, a power of two
  static let hashOffset = 48  // u64
  static let pageTableOffset = 56  // u64
  static let slabOffset = 64  // u64
  static let pageCount = 72  // u64
  static let classCount = 80  // u32
  static let geometryEnd = 88  // the checksum covers [0, 88) and the class geometry
  static let checksum = 88  // u64
  static let state = 96  // u32: 0 live, 1 frozen
  static let pagesUsed = 104  // u64
  static let casCounter = 112  // u64: the last CAS handed out
  static let clock = 120  // u64: cache clock, seconds
  static let oldestLive = 128  // u64: flush_all horizon (0 = none)
  static let oldestCas = 136  // u64: items with a smaller CAS are flushed
  static let stats = 144  // StatCounter.count × u64, up to `reserved`
  // [stats end, 1008): reserved, zero. Format version 1 readers never look
  // at it, so fields may be added here without a version bump as long as
  // 0 means "not recorded". [496, 1000): evictions per size class
  // (`Header.classEvictions`, ClassStats.swift).
  // u64 `-n` and the u64 bit pattern of the f64 `-f` the size classes were
  // built with (0: formatted by an image without them, with memcached's
  // defaults 48 and 1.25, which older images assume). Outside the
  // checksum, but `Geometry.check` rebuilds the checksummed chunk sizes
  // from them.
  static let chunkSpace = 480
  static let growthFactor = 488
  // u64: the wall-clock second (unix time) at which the cache clock would
  // have read 0, written by `format` (0: not recorded, by an older image).
  // The cache clock only runs while an image runs, so it can never be
  // ahead of the wall-clock time elapsed since then: the one independent
  // reference `attach` has to refuse a clock from the far future.
  static let clockEpochWallSeconds = 1008
  // u64: the cache clock in nanoseconds when the store was frozen, so that
  // the next image resumes it without losing the fraction of a second
  // (0: not recorded; the seconds in `clock` then).
  static let clockNanoseconds = 1016
  static let classTable = 1024  // ClassField.size × maxClasses
  static let size = 8192

  static let magicBytes: [UInt8] = Array("KHOCACHE".utf8)
  static let stateLive: UInt32 = 0
  static let stateFrozen: UInt32 = 1
}

/// Offsets inside one entry of the class table.
enum ClassField {
  static let chunkSize = 0  // u64
  static let perPage = 8  // u64
  static let freeHead = 16  // u64: chunk offset
  static let freeCount = 24  // u64
  static let lruHead = 32  // u64: most recently used
  static let lruTail = 40  // u64: least recently used
  static let itemCount = 48  // u64
  static let pageCount = 56  // u64
  static let size = 64
}

/// Offsets inside an item (and a free chunk, which uses `hashNext` as its link).
enum ItemField {
  static let hashNext = 0  // u64
  static let lruPrev = 8  // u64
  static let lruNext = 16  // u64
  static let cas = 24  // u64
  static let exptime = 32  // u32, cache clock; 0 = never
  static let time = 36  // u32, cache clock of the last access
  static let flags = 40  // u32
  static let valueLength = 44  // u32
  static let hash = 48  // u32
  static let keyLength = 52  // u8
  static let classId = 53  // u8
  static let itemFlags = 54  // u8
  // u8: the meta protocol's item bits (`fetched`, `tokenSent`, `stale`,
  // `binaryKey` below), format 3. A format 2 image would neither clear
  // them when it reuses a chunk nor keep them meaningful, hence the bump.
  static let metaFlags = 55
  // u32: CRC-32C of flags and value length (40..<48), the key length (52),
  // the key and the value; written when the item is filled, checked before
  // its bytes are served (format 2).
  static let checksum = 56
  static let headerSize = 64  // key bytes follow, then value bytes

  static let linked: UInt8 = 1
  /// Written by earlier builds only inside one locked operation, never at
  /// rest. This build keeps the pin in `StoreCore.pinned` instead (a damaged
  /// region could otherwise pin items forever); the bit is ignored.
  static let pinned: UInt8 = 2

  /// memcached's ITEM_FETCHED: read at least once since stored.
  static let fetched: UInt8 = 1
  /// memcached's ITEM_TOKEN_SENT: a client was handed the recache win (W).
  static let tokenSent: UInt8 = 2
  /// memcached's ITEM_STALE: invalidated by `md I` (or a stale `ms I`).
  static let stale: UInt8 = 4
  /// memcached's ITEM_KEY_BINARY: stored with a base64 key (`b`), so the
  /// key is shown base64-encoded again.
  static let binaryKey: UInt8 = 8
}

/// Counters kept in the header, so that they survive a handover.
enum StatCounter: Int, CaseIterable {
  case currItems, totalItems, bytes, evictions, reclaimed
  case cmdGet, cmdSet, cmdFlush, cmdTouch
  case getHits, getMisses, getExpired, getFlushed
  case deleteHits, deleteMisses, incrHits, incrMisses, decrHits, decrMisses
  case casHits, casMisses, casBadval, touchHits, touchMisses
  case storeTooLarge, storeNoMemory
  // Added after format version 1 shipped, in the reserved words after the
  // others (zero in a region an older image formatted, ignored by it).
  /// Damage found in the region and cut away (an item, a chain, a list).
  case damaged
  /// Slab pages moved from one size class to another.
  case slabsMoved
  /// Evicted items never fetched, and expired ones reclaimed unfetched.
  case evictedUnfetched, expiredUnfetched
}

/// Limits of the format.
public enum CacheLimits {
  /// memcached's KEY_MAX_LENGTH.
  public static let maxKeyLength = 250
  /// Class ids are one byte and 0 means "unused page"; memcached has 63 too.
  static let maxClasses = 63
  /// memcached's REALTIME_MAXDELTA: exptimes above it are absolute unix times.
  static let relativeExptimeMax: Int64 = 60 * 60 * 24 * 30
  /// The cache clock starts here so that 1 always means "already expired".
  static let clockStart: UInt64 = 2
  /// memcached's ITEM_UPDATE_INTERVAL: an item is moved to the LRU head at
  /// most this often, which keeps hot reads from rewriting the list.
  static let lruBumpInterval: UInt32 = 60
}

extension Header {
  /// The stats words must end before the reserved field(s) above.
  static let statsEnd = stats + StatCounter.allCases.count * 8
}

/// Raw, unchecked access to the region. Bounds are established once by
/// `format` or `attach`; after that, offsets come from validated geometry.
struct RegionMemory {
  let base: UnsafeMutableRawPointer
  let size: Int

  @inline(__always) func u64(_ offset: Int) -> UInt64 {
    base.load(fromByteOffset: offset, as: UInt64.self)
  }
  @inline(__always) func setU64(_ offset: Int, _ value: UInt64) {
    base.storeBytes(of: value, toByteOffset: offset, as: UInt64.self)
  }
  @inline(__always) func u32(_ offset: Int) -> UInt32 {
    base.load(fromByteOffset: offset, as: UInt32.self)
  }
  @inline(__always) func setU32(_ offset: Int, _ value: UInt32) {
    base.storeBytes(of: value, toByteOffset: offset, as: UInt32.self)
  }
  @inline(__always) func u8(_ offset: Int) -> UInt8 {
    base.load(fromByteOffset: offset, as: UInt8.self)
  }
  @inline(__always) func setU8(_ offset: Int, _ value: UInt8) {
    base.storeBytes(of: value, toByteOffset: offset, as: UInt8.self)
  }
  @inline(__always) func off(_ offset: Int) -> Int { Int(truncatingIfNeeded: u64(offset)) }
  // Bit patterns both ways: a damaged link read as a negative Int is
  // copied back unchanged (never trapping) and checked when followed.
  @inline(__always) func setOff(_ offset: Int, _ value: Int) {
    setU64(offset, UInt64(bitPattern: Int64(value)))
  }
  @inline(__always) func bytes(_ offset: Int, _ count: Int) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(start: base + offset, count: count)
  }
  @inline(__always) func mutableBytes(_ offset: Int, _ count: Int) -> UnsafeMutableRawBufferPointer
  {
    UnsafeMutableRawBufferPointer(start: base + offset, count: count)
  }
}
