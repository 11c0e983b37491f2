#if canImport(Glibc)
  import Glibc
#endif

/// A hash map whose whole state lives in one caller-given region (in
/// production a preserved range of the KHO arena), addressed by offsets, so
/// that the next image attaches it in O(1) with no fix-up.
///
/// Keys and values are anything ``ArenaCodable``: byte strings (`[UInt8]`,
/// `String`) or fixed-width ``ArenaFixedWidth`` values. Each entry may
/// carry an expiry (``set(_:_:expiresAt:)``); when the region is full the
/// least recently used entries are evicted.
///
/// Layout, version 2 (native-endian, offsets from the region's start):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | magic `"KHOCHMAP"` |
/// | 8 | 4 | version (2) |
/// | 16 | 8 | region size in use |
/// | 24 | 8 | bucket array offset |
/// | 32 | 8 | bucket count (a power of two) |
/// | 40 | 8 | entries |
/// | 48 | 8 | heap start (a multiple of 64) |
/// | 56 | 8 | heap top (bump allocation, a multiple of 64) |
/// | 64, 72 | 8 each | LRU head (most recent), tail |
/// | 80, 88 | 8 each | evictions, expirations |
/// | 96 | 8 | hash seed |
/// | 104 | 8 × 32 | free lists, one per size class (64 << class bytes) |
/// | 360 | 8 | use tick (counts moves to the LRU front) |
///
/// A bucket, and an entry's chain link, is a tagged link: the entry's
/// offset in the low 48 bits and the top 16 bits of its key's hash above,
/// so that a walk compares keys only with entries whose tag matches.
///
/// An entry (a slot of 64 << class bytes, 64-aligned): `chain next`
/// (tagged link), `lru prev`, `lru next`, `expiry` (u64 each), `value
/// length` (u32), `key length` (u16), `size class` (u8), a zero byte,
/// `use tick` (u32), `crc32c` (u32), then the key and value bytes from
/// offset 48: an 8-byte key and value fill exactly one cache line. The CRC
/// covers expiry through the zero byte and the bytes; the links are checked
/// by where they point.
///
/// **Never trusting the region**: ``attach(_:now:)`` checks the header
/// once and keeps the fields it checked (bucket array, heap bounds, seed)
/// in this image's memory, so nothing written into the region later can
/// move them. Every link is checked before it is followed (inside the
/// heap, aligned, its slot inside the heap), every walk is bounded by a
/// cycle check, a key is compared only when its length fits its slot, and
/// an entry is returned only when its CRC matches. What fails is cut away
/// and counted in ``damage``; the map never crashes on it.
///
/// **Growth across upgrades**: a later image may attach the same bytes in a
/// bigger region (the KHO helper copies them there); ``attach(_:now:)``
/// then extends the heap to the new size, and ``rehash(bucketCount:)``
/// moves the buckets to a bigger array in the heap. A region of another
/// layout version (version 1 before the tagged links) is refused with
/// ``ArenaAttachError/unsupportedVersion(_:)``.
///
/// Not thread-safe: callers serialize access (a `Mutex` around it).
public final class ArenaHashMap<Key: ArenaCodable, Value: ArenaCodable> {
  /// The string that names this layout in the map's FDT node.
  public static var compatible: String { "kho-collections,hash-map-v2" }
  /// The layout version this image writes and reads.
  public static var version: UInt32 { 2 }

  static var magic: UInt64 { 0x5041_4d48_434f_484b }  // "KHOCHMAP" in memory order
  static var headerSize: Int { 384 }
  static var entryHeader: Int { 48 }
  static var classCount: Int { 32 }
  /// The longest key an entry can record (its length is a u16).
  public static var maximumKeyLength: Int { Int(UInt16.max) }
  static var offsetMask: UInt64 { 0xFFFF_FFFF_FFFF }

  let region: Region
  /// What was found damaged and dropped since this image attached: cut
  /// links, entries whose CRC failed, broken LRU links (each repair counts).
  public private(set) var damage = 0
  /// The clock expiry times are compared with (seconds).
  let now: () -> UInt64

  // The header fields checked by `checkHeader`, kept here: reading them
  // from the region on every operation costs loads and, worse, would let a
  // later stray write to the region move the bounds every check relies on.
  // Each is written through to the region when it changes.
  private let size: Int
  private let seed: UInt64
  private let heapStart: Int
  private var bucketsAt: Int
  private var bucketMask: UInt64
  private var heapTop: Int {
    didSet { region.store64(UInt64(heapTop), 56) }
  }
  private var entries: Int {
    didSet { region.store64(UInt64(entries), 40) }
  }

  private init(_ region: Region, now: @escaping () -> UInt64) {
    self.region = region
    self.now = now
    size = Int(truncatingIfNeeded: region.load64(16))
    seed = region.load64(96)
    heapStart = Int(truncatingIfNeeded: region.load64(48))
    bucketsAt = Int(truncatingIfNeeded: region.load64(24))
    bucketMask = region.load64(32) &- 1
    heapTop = Int(truncatingIfNeeded: region.load64(56))
    // The count is only ever a statistic and a threshold: clamped, never trusted.
    entries = Int(clamping: Swift.min(region.load64(40), region.load64(16) / 64))
  }

  // MARK: Creating and attaching

  /// Formats `bytes` as an empty map with `bucketCount` buckets (rounded up
  /// to a power of two), overwriting what was there.
  public static func format(
    _ bytes: UnsafeMutableRawBufferPointer, bucketCount: Int = 1024,
    now: @escaping () -> UInt64 = wallClockSeconds
  ) throws(ArenaAttachError) -> ArenaHashMap {
    let buckets = nextPowerOfTwo(Swift.min(Swift.max(1, bucketCount), bytes.count / 8))
    let heapStart = roundUp64(headerSize + buckets * 8)
    guard bytes.count >= heapStart + 64 else {
      throw .tooSmall(needed: heapStart + 64, have: bytes.count)
    }
    let r = Region(bytes)
    r.base.initializeMemory(as: UInt8.self, repeating: 0, count: heapStart)
    r.store64(magic, 0)
    r.store32(version, 8)
    r.store64(UInt64(bytes.count), 16)
    r.store64(UInt64(headerSize), 24)
    r.store64(UInt64(buckets), 32)
    r.store64(UInt64(heapStart), 48)
    r.store64(UInt64(heapStart), 56)
    r.store64(UInt64.random(in: 1...UInt64.max), 96)
    return ArenaHashMap(r, now: now)
  }

  /// Attaches the map the previous image left in `bytes`: O(1), the header
  /// checked, nothing else touched. A region bigger than the map's size
  /// grows the map's heap to it. A map of another layout version throws
  /// ``ArenaAttachError/unsupportedVersion(_:)``.
  public static func attach(
    _ bytes: UnsafeMutableRawBufferPointer, now: @escaping () -> UInt64 = wallClockSeconds
  ) throws(ArenaAttachError) -> ArenaHashMap {
    guard bytes.count >= headerSize else { throw .tooSmall(needed: headerSize, have: bytes.count) }
    let r = Region(bytes)
    try checkHeader(r)
    if Int(r.load64(16)) < bytes.count { r.store64(UInt64(bytes.count), 16) }
    return ArenaHashMap(r, now: now)
  }

  private static func checkHeader(_ r: Region) throws(ArenaAttachError) {
    guard r.load64(0) == magic else { throw .badMagic(r.load64(0)) }
    guard r.load32(8) == version else { throw .unsupportedVersion(r.load32(8)) }
    let size = r.load64(16)
    guard size >= UInt64(headerSize), size <= UInt64(r.count) else {
      throw .badHeader("size \(size) for a region of \(r.count)")
    }
    let bucketsAt = r.load64(24)
    let buckets = r.load64(32)
    guard buckets > 0, buckets & (buckets - 1) == 0, buckets <= size / 8,
      bucketsAt >= UInt64(headerSize), bucketsAt % 8 == 0, bucketsAt + buckets * 8 <= size
    else { throw .badHeader("bucket array \(bucketsAt) × \(buckets)") }
    let heapStart = r.load64(48)
    let heapTop = r.load64(56)
    // Offsets live in 48 bits of a tagged link: a bigger region cannot be addressed.
    guard heapStart >= UInt64(headerSize), heapStart % 64 == 0, heapStart <= heapTop,
      heapTop <= size, heapTop % 64 == 0, size <= offsetMask
    else { throw .badHeader("heap \(heapStart)..<\(heapTop)") }
  }

  // MARK: Header fields

  /// The entries in the map (expired ones not yet met included).
  public var count: Int { entries }
  /// Whether the map holds no entry.
  public var isEmpty: Bool { count == 0 }
  /// Entries evicted to make room, over the map's whole life.
  public var evictions: UInt64 { region.load64(80) }
  /// Entries dropped because they expired, over the map's whole life.
  public var expirations: UInt64 { region.load64(88) }
  /// The bytes of the region the map uses.
  public var capacityBytes: Int { size }
  /// The buckets of the hash table.
  public var bucketCount: Int { Int(bucketMask) + 1 }

  private func addToCount(_ delta: Int) {
    entries = Swift.max(0, entries + delta)  // entries is at most size / 64: no overflow
  }

  // MARK: Hashing

  /// A seeded 64-bit hash, stable across processes (the seed is in the
  /// header): 8 bytes at a time with a multiply-xorshift mix.
  @inline(__always) func hash(_ key: UnsafeRawBufferPointer) -> UInt64 {
    var h = seed ^ (UInt64(key.count) &* 0x9e37_79b9_7f4a_7c15)
    var i = 0
    while i + 8 <= key.count {
      h = mix(h ^ key.loadUnaligned(fromByteOffset: i, as: UInt64.self))
      i += 8
    }
    if i < key.count {
      var tail: UInt64 = 0
      for j in i..<key.count { tail |= UInt64(key[j]) << (8 * UInt64(j - i)) }
      h = mix(h ^ tail)
    }
    return mix(h)
  }

  @inline(__always) private func mix(_ x: UInt64) -> UInt64 {
    var z = x &* 0xbf58_476d_1ce4_e5b9
    z ^= z >> 31
    z = z &* 0x94d0_49bb_1331_11eb
    return z ^ (z >> 29)
  }

  /// The link to the entry at `at` for a key of hash `h`: the offset, and
  /// the hash's top 16 bits as a tag a walk compares before the key.
  @inline(__always) private static func link(to at: Int, hash h: UInt64) -> UInt64 {
    UInt64(at) | (h & ~offsetMask)
  }

  @inline(__always) private func bucket(for h: UInt64) -> Int {
    bucketsAt &+ Int(truncatingIfNeeded: h & bucketMask) &* 8
  }

  // MARK: Entry checks

  /// Whether `at` may be an entry: in the heap, 64-aligned, its header and
  /// its slot inside the heap.
  @inline(__always) func isEntry(_ at: Int) -> Bool {
    guard at >= heapStart, at & 63 == 0, at <= heapTop - Self.entryHeader else { return false }
    let sizeClass = Int(region.load8(at + 38))
    guard sizeClass < Self.classCount else { return false }
    return at <= heapTop - (64 << sizeClass)
  }

  @inline(__always) private func keyLength(_ at: Int) -> Int { Int(region.load16(at + 36)) }
  @inline(__always) private func valueLength(_ at: Int) -> Int { Int(region.load32(at + 32)) }
  /// The bytes an entry's slot has for key and value (after `isEntry`).
  @inline(__always) private func payloadCapacity(_ at: Int) -> Int {
    (64 << Int(region.load8(at + 38))) - Self.entryHeader
  }

  /// The entry's CRC over its expiry, lengths, class and bytes, or `nil`
  /// when the lengths do not fit its slot.
  @inline(__always) private func entryCRC(_ at: Int) -> UInt32? {
    let payload = keyLength(at) + valueLength(at)
    guard payload <= payloadCapacity(at) else { return nil }
    return region.crc(at + Self.entryHeader, payload, continuing: region.crc(at + 24, 16))
  }

  /// Whether the entry is intact: lengths that fit its slot, a CRC that
  /// matches.
  @inline(__always) func isIntact(_ at: Int) -> Bool {
    entryCRC(at) == region.load32(at + 44)
  }

  /// The entry's key bytes (after `isIntact`, which checked the length).
  @inline(__always) private func keyBytes(_ at: Int) -> UnsafeRawBufferPointer {
    region.bytes(at + Self.entryHeader, keyLength(at))
  }

  @inline(__always) private func isExpired(_ at: Int, now: UInt64) -> Bool {
    let expiry = region.load64(at + 24)
    return expiry != 0 && expiry <= now
  }

  // MARK: Lookup

  /// Finds the entry for `key`, dropping damaged and expired entries met on
  /// the way. Returns its offset.
  private func find(_ key: UnsafeRawBufferPointer, hash h: UInt64) -> Int? {
    let tag = h & ~Self.offsetMask
    var link = bucket(for: h)
    var guardian = CycleGuard()
    while true {
      let word = region.load64(link)
      let at = Int(truncatingIfNeeded: word & Self.offsetMask)
      if at == 0 { return nil }
      guard isEntry(at), !guardian.hasLooped(at) else {
        cut(link)
        return nil
      }
      // The tag first (no load), then the length against the caller's and
      // against the slot, so the comparison never reads past the entry.
      if word & ~Self.offsetMask == tag, keyLength(at) == key.count,
        key.count <= payloadCapacity(at),
        key.count == 0
          || memcmp(region.base + at + Self.entryHeader, key.baseAddress!, key.count) == 0
      {
        guard isIntact(at) else {
          dropDamaged(at, link: link)
          return nil
        }
        if region.load64(at + 24) != 0, isExpired(at, now: now()) {
          unlinkChain(at, link: link)
          region.store64(region.load64(88) &+ 1, 88)
          return nil
        }
        return at
      }
      link = at
    }
  }

  /// Cuts a link that points at no entry: what was behind it is lost (the
  /// LRU or a rebuild finds the entries that are still whole).
  private func cut(_ link: Int) {
    region.store64(0, link)
    damage += 1
  }

  private func dropDamaged(_ at: Int, link: Int) {
    damage += 1
    unlinkChain(at, link: link)
  }

  /// Removes the entry at `at` (reached through `link`) from its chain and
  /// the LRU and frees it.
  private func unlinkChain(_ at: Int, link: Int) {
    region.store64(region.load64(at), link)  // the next entry's tagged link, tag and all
    unlinkLRU(at)
    addToCount(-1)
    free(at)
  }

  /// Calls `body` with the bytes of the value for `key`, or returns `nil`
  /// when there is none; the entry becomes the most recently used.
  @inlinable
  public func withValueBytes<R>(
    forKey key: Key, _ body: (UnsafeRawBufferPointer) throws -> R
  ) rethrows -> R? {
    guard let bytes = key.withArenaBytes({ valueBytes(forKeyBytes: $0) }) else { return nil }
    return try body(bytes)
  }

  /// Calls `body` with a span over the value's bytes for `key`, or returns
  /// `nil` when there is none.
  @inlinable
  public func withValueSpan<R>(forKey key: Key, _ body: (RawSpan) throws -> R) rethrows -> R? {
    try withValueBytes(forKey: key) { bytes in try body(bytes.bytes) }
  }

  /// The value for `key`, or `nil`. Setting `nil` removes the entry.
  /// A set that does not fit even after evicting is dropped (see
  /// ``set(_:_:expiresAt:)`` for one that reports it).
  @inlinable
  public subscript(key: Key) -> Value? {
    get { withValueBytes(forKey: key) { Value(arenaBytes: $0) } ?? nil }
    set {
      if let newValue { _ = try? set(key, newValue) } else { removeValue(forKey: key) }
    }
  }

  /// Whether the map holds `key`.
  @inlinable
  public func contains(_ key: Key) -> Bool {
    key.withArenaBytes { entry(forKeyBytes: $0) } != nil
  }

  /// The expiry of `key` (seconds on the wall clock, 0 for none).
  @inlinable
  public func expiry(forKey key: Key) -> UInt64? {
    key.withArenaBytes { expiry(forKeyBytes: $0) }
  }

  // The non-generic halves of the generic entry points above: callers in
  // other modules specialise the key's and value's encoding inline and
  // call these with bytes.

  /// The entry for a key's bytes, if the map holds it.
  @usableFromInline
  func entry(forKeyBytes key: UnsafeRawBufferPointer) -> Int? { find(key, hash: hash(key)) }

  /// The value's bytes for a key's bytes, the entry made most recent.
  @usableFromInline
  func valueBytes(forKeyBytes key: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
    guard let at = find(key, hash: hash(key)) else { return nil }
    touch(at)
    return region.bytes(at + Self.entryHeader + keyLength(at), valueLength(at))
  }

  /// The expiry for a key's bytes.
  @usableFromInline
  func expiry(forKeyBytes key: UnsafeRawBufferPointer) -> UInt64? {
    guard let at = find(key, hash: hash(key)) else { return nil }
    return region.load64(at + 24)
  }

  // MARK: Updates

  /// Why a set was refused.
  public enum SetError: Error, Sendable, Equatable {
    /// The entry is bigger than the map could ever hold.
    case tooLarge(Int)
    /// Nothing more could be evicted and the entry still does not fit.
    case full
  }

  /// Stores `value` for `key`, replacing what was there; `expiresAt` (wall
  /// clock seconds, 0 for never) makes it expire. Evicts least recently
  /// used entries when the region is full.
  @inlinable
  public func set(_ key: Key, _ value: Value, expiresAt: UInt64 = 0) throws(SetError) {
    let result: Result<Void, SetError> = key.withArenaBytes { keyBytes in
      value.withArenaBytes { valueBytes in
        Result { () throws(SetError) in try insert(keyBytes, valueBytes, expiresAt: expiresAt) }
      }
    }
    try result.get()
  }

  @usableFromInline
  func insert(
    _ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer, expiresAt: UInt64
  ) throws(SetError) {
    let h = hash(key)
    if let old = find(key, hash: h) { remove(old, hash: h) }
    guard key.count <= Self.maximumKeyLength else { throw .tooLarge(key.count) }
    let payload = key.count + value.count
    guard payload <= UInt32.max, let sizeClass = Self.sizeClass(for: payload) else {
      throw .tooLarge(payload)
    }
    let at = try allocate(sizeClass)
    let r = region
    r.store64(expiresAt, at + 24)
    r.store32(UInt32(value.count), at + 32)
    r.store16(UInt16(key.count), at + 36)
    r.store8(UInt8(sizeClass), at + 38)
    r.store8(0, at + 39)
    r.copy(key, to: at + Self.entryHeader)
    r.copy(value, to: at + Self.entryHeader + key.count)
    r.store32(entryCRC(at) ?? 0, at + 44)
    let bucket = bucket(for: h)
    r.store64(r.load64(bucket), at)
    r.store64(Self.link(to: at, hash: h), bucket)
    pushLRU(at)
    addToCount(1)
  }

  /// Removes `key`'s entry; returns whether there was one.
  @inlinable @discardableResult
  public func removeValue(forKey key: Key) -> Bool {
    key.withArenaBytes { removeValue(forKeyBytes: $0) }
  }

  /// Removes the entry for a key's bytes; whether there was one.
  @usableFromInline
  func removeValue(forKeyBytes bytes: UnsafeRawBufferPointer) -> Bool {
    let h = hash(bytes)
    guard let at = find(bytes, hash: h) else { return false }
    remove(at, hash: h)
    return true
  }

  /// Removes every entry (the layout stays, the heap is reset).
  public func removeAll() {
    let r = region
    (r.base + bucketsAt).initializeMemory(as: UInt8.self, repeating: 0, count: bucketCount * 8)
    for c in 0..<Self.classCount { r.store64(0, 104 + c * 8) }
    r.store64(0, 64)
    r.store64(0, 72)
    entries = 0
    heapTop = Swift.max(heapStart, roundUp64(bucketsAt + bucketCount * 8))
  }

  /// Removes the entry at `at` from its chain (found again by walking the
  /// bucket from its head).
  @discardableResult private func remove(_ at: Int, hash h: UInt64) -> Bool {
    var link = bucket(for: h)
    var guardian = CycleGuard()
    while true {
      let next = Int(truncatingIfNeeded: region.load64(link) & Self.offsetMask)
      if next == 0 { return false }
      guard isEntry(next), !guardian.hasLooped(next) else {
        cut(link)
        return false
      }
      if next == at {
        unlinkChain(at, link: link)
        return true
      }
      link = next
    }
  }

  // MARK: Allocation

  static func sizeClass(for payload: Int) -> Int? {
    let needed = payload + entryHeader
    let sizeClass = needed <= 64 ? 0 : (Int.bitWidth - (needed - 1).leadingZeroBitCount) - 6
    return sizeClass < classCount ? sizeClass : nil
  }

  /// An entry of `sizeClass`: from its free list, else from the heap top,
  /// else by evicting the least recently used until one of those works.
  private func allocate(_ sizeClass: Int) throws(SetError) -> Int {
    let bytes = 64 << sizeClass
    guard bytes <= size - heapStart else { throw .tooLarge(bytes) }
    var evicted = 0
    while true {
      if let at = popFree(sizeClass) { return at }
      if heapTop + bytes <= size {
        let at = heapTop
        heapTop = at + bytes
        return at
      }
      // Bounded by what the heap can hold, not by the (untrusted) count.
      guard evicted <= (size - heapStart) / 64, evictLeastRecent() else { throw .full }
      evicted += 1
    }
  }

  private func free(_ at: Int) {
    let sizeClass = Int(region.load8(at + 38))
    let list = 104 + sizeClass * 8
    region.store32(0, at + 44)  // a freed entry never passes the CRC again
    region.store64(region.load64(list), at)
    region.store64(UInt64(at), list)
  }

  /// Pops a free entry of `sizeClass`. A damaged free list is dropped
  /// (its entries leak until `removeAll`), never followed.
  private func popFree(_ sizeClass: Int) -> Int? {
    let list = 104 + sizeClass * 8
    let at = Int(truncatingIfNeeded: region.load64(list))
    if at == 0 { return nil }
    guard isEntry(at), Int(region.load8(at + 38)) == sizeClass else {
      cut(list)
      return nil
    }
    region.store64(region.load64(at), list)
    return at
  }

  // MARK: LRU

  private var lruHead: Int { Int(truncatingIfNeeded: region.load64(64)) }
  private var lruTail: Int { Int(truncatingIfNeeded: region.load64(72)) }

  private func pushLRU(_ at: Int) {
    let tick = region.load64(360) &+ 1
    region.store64(tick, 360)
    region.store32(UInt32(truncatingIfNeeded: tick), at + 40)
    let head = lruHead
    region.store64(0, at + 8)
    region.store64(UInt64(head), at + 16)
    if head != 0 && isEntry(head) {
      region.store64(UInt64(at), head + 8)
    } else {
      region.store64(UInt64(at), 72)
    }
    region.store64(UInt64(at), 64)
  }

  /// Takes the entry out of the LRU list. Links that do not point back at
  /// it are damage: the list is rebuilt from the buckets.
  private func unlinkLRU(_ at: Int) {
    let prev = Int(truncatingIfNeeded: region.load64(at + 8))
    let next = Int(truncatingIfNeeded: region.load64(at + 16))
    let prevOK = prev == 0 ? lruHead == at : isEntry(prev) && region.load64(prev + 16) == UInt64(at)
    let nextOK = next == 0 ? lruTail == at : isEntry(next) && region.load64(next + 8) == UInt64(at)
    guard prevOK, nextOK else {
      damage += 1
      return rebuildLRU(excluding: at)
    }
    if prev == 0 {
      region.store64(UInt64(next), 64)
    } else {
      region.store64(UInt64(next), prev + 16)
    }
    if next == 0 {
      region.store64(UInt64(prev), 72)
    } else {
      region.store64(UInt64(prev), next + 8)
    }
  }

  /// Moves a hit entry to the front of the LRU, but only when it is in
  /// the older half of the list by use ticks (as memcached bumps an item at
  /// most once a minute): a hit on a recent entry writes nothing, so reads
  /// stay cheap and the order is LRU to within half the list.
  @inline(__always) private func touch(_ at: Int) {
    // 32 bits of tick, compared with wrapping: an entry untouched for 2^32
    // moves may look recent once, which costs only order.
    let tick = UInt32(truncatingIfNeeded: region.load64(360))
    guard tick &- region.load32(at + 40) > UInt32(clamping: count / 2), lruHead != at else {
      return
    }
    unlinkLRU(at)
    pushLRU(at)
  }

  /// Evicts the least recently used entry; false when there is none.
  private func evictLeastRecent() -> Bool {
    let tail = lruTail
    guard tail != 0 else { return false }
    guard isEntry(tail), isIntact(tail) else {
      damage += 1
      rebuildLRU(excluding: nil)
      return lruTail != 0
    }
    if !remove(tail, hash: hash(keyBytes(tail))) {
      // In the LRU but in no chain: damage; take it off the list alone.
      damage += 1
      unlinkLRU(tail)
      if lruTail == tail { rebuildLRU(excluding: nil) }
      return lruTail != tail
    }
    region.store64(region.load64(80) &+ 1, 80)
    return true
  }

  /// Rebuilds the LRU list (and the count) from the buckets: each chain
  /// walked once, bounded by its cycle check, damaged entries cut away.
  /// The order of use is lost; what the buckets hold is kept.
  private func rebuildLRU(excluding excluded: Int?) {
    region.store64(0, 64)
    region.store64(0, 72)
    var kept = 0
    for bucket in 0..<bucketCount {
      var link = bucketsAt + bucket * 8
      var guardian = CycleGuard()
      while true {
        let at = Int(truncatingIfNeeded: region.load64(link) & Self.offsetMask)
        if at == 0 { break }
        guard isEntry(at), !guardian.hasLooped(at), isIntact(at) else {
          cut(link)
          break
        }
        if at != excluded {
          pushLRU(at)
          kept += 1
        }
        link = at
      }
    }
    entries = kept + (excluded == nil ? 0 : 1)
  }

  // MARK: Growth

  /// Moves the buckets to a new array of `bucketCount` (a power of two,
  /// bigger than now) taken from the heap, and rehashes every intact entry
  /// into it. For a later image that attached a bigger region.
  public func rehash(bucketCount newCount: Int) throws(SetError) {
    guard newCount <= size / 16 else { throw .full }
    let buckets = nextPowerOfTwo(newCount)
    guard buckets > bucketCount else { return }
    let at = heapTop
    // Rounded to 64 so that the entries allocated after it stay aligned.
    let arrayBytes = roundUp64(buckets * 8)
    guard at + arrayBytes <= size else { throw .full }
    heapTop = at + arrayBytes
    (region.base + at).initializeMemory(as: UInt8.self, repeating: 0, count: arrayBytes)
    var moved: [(entry: Int, hash: UInt64)] = []
    for bucket in 0..<bucketCount {
      var link = bucketsAt + bucket * 8
      var guardian = CycleGuard()
      while true {
        let entry = Int(truncatingIfNeeded: region.load64(link) & Self.offsetMask)
        if entry == 0 { break }
        guard isEntry(entry), !guardian.hasLooped(entry), isIntact(entry) else {
          cut(link)
          break
        }
        // The hash is not stored: recomputed from the key, whose length
        // `isIntact` has just checked against the slot.
        moved.append((entry, hash(keyBytes(entry))))
        link = entry
      }
    }
    bucketsAt = at
    bucketMask = UInt64(buckets - 1)
    region.store64(UInt64(at), 24)
    region.store64(UInt64(buckets), 32)
    for (entry, h) in moved {
      let bucket = bucket(for: h)
      region.store64(region.load64(bucket), entry)
      region.store64(Self.link(to: entry, hash: h), bucket)
    }
    rebuildLRU(excluding: nil)
  }
}

// MARK: Sequence

extension ArenaHashMap: Sequence {
  /// Walks the buckets in order; damaged and expired entries are skipped,
  /// a broken chain ends at the break. Do not mutate the map while walking.
  public struct Iterator: IteratorProtocol {
    let map: ArenaHashMap
    var bucket = 0
    var pending = 0
    var guardian = CycleGuard()
    let now: UInt64

    public mutating func next() -> (key: Key, value: Value)? {
      while true {
        while pending == 0 {
          guard bucket < map.bucketCount else { return nil }
          pending = map.chainHead(bucket)
          bucket += 1
          guardian = CycleGuard()
        }
        let at = pending
        guard map.isEntry(at), !guardian.hasLooped(at) else {
          pending = 0
          continue
        }
        pending = Int(truncatingIfNeeded: map.region.load64(at) & ArenaHashMap.offsetMask)
        guard map.isIntact(at) else { continue }
        let expiry = map.region.load64(at + 24)
        if expiry != 0 && expiry <= now { continue }
        let keyLength = Int(map.region.load16(at + 36))
        let valueLength = Int(map.region.load32(at + 32))
        let start = at + ArenaHashMap.entryHeader
        guard let key = Key(arenaBytes: map.region.bytes(start, keyLength)),
          let value = Value(arenaBytes: map.region.bytes(start + keyLength, valueLength))
        else { continue }
        return (key, value)
      }
    }
  }

  /// The first entry of bucket `index`'s chain (0 for none), for the iterator.
  fileprivate func chainHead(_ index: Int) -> Int {
    Int(truncatingIfNeeded: region.load64(bucketsAt + index * 8) & Self.offsetMask)
  }

  /// An iterator over the live entries, in bucket order.
  public func makeIterator() -> Iterator { Iterator(map: self, now: now()) }
}

/// `n` rounded up to a multiple of 64, the alignment of every entry.
func roundUp64(_ n: Int) -> Int { (n + 63) & ~63 }
