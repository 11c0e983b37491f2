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
/// | 16 | 8 | region size in use (at most 2³⁸) |
/// | 24 | 8 | slot array offset |
/// | 32 | 8 | slot count (a power of two, at most 2³¹) |
/// | 40 | 8 | entries |
/// | 48 | 8 | heap start (a multiple of 64) |
/// | 56 | 8 | heap top (bump allocation, a multiple of 64) |
/// | 64, 72 | 8 each | LRU head (most recent), tail |
/// | 80, 88 | 8 each | evictions, expirations |
/// | 96 | 8 | hash seed |
/// | 104 | 8 × 32 | free lists, one per size class (64 << class bytes) |
/// | 360 | 8 | use tick (counts moves to the LRU front) |
///
/// The table is open-addressed with linear probing: a slot is a u64 with
/// the low 32 bits of the key's hash above and the entry's offset in
/// 64-byte units below (0 for an empty slot). A probe compares the 32 hash
/// bits in the slot and reads an entry only when they match, so a miss
/// reads slots and no entry, and a hit reads one entry. A removal shifts
/// the slots after it back (no tombstones); the table doubles when three
/// quarters full, in the heap, while the heap has room.
///
/// An entry (a slot of 64 << class bytes, 64-aligned): `lru prev`, `lru
/// next` (u32, in 64-byte units), `use tick` (u32), `crc32c` (u32),
/// `expiry` (u64), `value length` (u32), `key length` (u16), `size class`
/// (u8), a zero byte, then the key and value bytes from offset 32: a
/// 24-byte key with an 8-byte value fills exactly one cache line. The CRC
/// covers expiry through the bytes, one contiguous run; the links are
/// checked by where they point.
///
/// **Never trusting the region**: ``attach(_:now:)`` checks the header
/// once and keeps the fields it checked (slot array, heap bounds, seed) in
/// this image's memory, so nothing written into the region later can move
/// them. Every slot is checked before its entry is read (inside the heap,
/// aligned, the entry's slot of memory inside the heap), every probe and
/// every walk is bounded (the slot count; Brent's cycle check for the LRU),
/// a key is compared only when its length fits its entry, and an entry is
/// returned only when its CRC matches. What fails is cut away and counted
/// in ``damage``; the map never crashes on it.
///
/// **Growth across upgrades**: a later image may attach the same bytes in a
/// bigger region (the KHO helper copies them there); ``attach(_:now:)``
/// then extends the heap to the new size, and the table doubles into it as
/// it fills (or at once with ``rehash(bucketCount:)``). A region of another
/// layout version (version 1 chained its entries) is refused with
/// ``ArenaAttachError/unsupportedVersion(_:)``.
///
/// Not thread-safe: callers serialize access (a `Mutex` around it).
public final class ArenaHashMap<Key: ArenaCodable, Value: ArenaCodable> {
  /// The string that names this layout in the map's FDT node.
  public static var compatible: String { "kho-collections,hash-map-v2" }
  /// The layout version this image writes and reads.
  public static var version: UInt32 { 2 }
  /// The longest key an entry can record (its length is a u16).
  public static var maximumKeyLength: Int { Int(UInt16.max) }

  static var magic: UInt64 { 0x5041_4d48_434f_484b }  // "KHOCHMAP" in memory order
  static var headerSize: Int { 384 }
  static var entryHeader: Int { 32 }
  static var classCount: Int { 32 }
  /// Offsets are stored in 64-byte units in 32 bits.
  static var maximumSize: UInt64 { 1 << 38 }
  static var maximumSlots: UInt64 { 1 << 31 }

  let region: Region
  /// What was found damaged and dropped since this image attached: slots
  /// that point at no entry, entries whose CRC failed, broken LRU links
  /// (each repair counts).
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
  private var slotsAt: Int
  private var slotMask: Int
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
    slotsAt = Int(truncatingIfNeeded: region.load64(24))
    slotMask = Int(truncatingIfNeeded: region.load64(32)) - 1
    heapTop = Int(truncatingIfNeeded: region.load64(56))
    // Only a statistic and a threshold, clamped: a wrong one is corrected
    // by the recount an eviction that finds nothing does.
    entries = Int(clamping: Swift.min(region.load64(40), region.load64(32)))
  }

  // MARK: Creating and attaching

  /// Formats `bytes` as an empty map with `bucketCount` slots (rounded up
  /// to a power of two), overwriting what was there. The table doubles as
  /// it fills, so this is only where it starts.
  public static func format(
    _ bytes: UnsafeMutableRawBufferPointer, bucketCount: Int = 1024,
    now: @escaping () -> UInt64 = wallClockSeconds
  ) throws(ArenaAttachError) -> ArenaHashMap {
    guard UInt64(bytes.count) <= maximumSize else {
      throw .badHeader("a region of \(bytes.count) bytes, at most \(maximumSize)")
    }
    let slots = nextPowerOfTwo(Swift.min(Swift.max(1, bucketCount), bytes.count / 16, 1 << 31))
    let heapStart = roundUp64(headerSize + slots * 8)
    guard bytes.count >= heapStart + 64 else {
      throw .tooSmall(needed: heapStart + 64, have: bytes.count)
    }
    let r = Region(bytes)
    r.base.initializeMemory(as: UInt8.self, repeating: 0, count: heapStart)
    r.store64(magic, 0)
    r.store32(version, 8)
    r.store64(UInt64(bytes.count), 16)
    r.store64(UInt64(headerSize), 24)
    r.store64(UInt64(slots), 32)
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
    let grown = Swift.min(UInt64(bytes.count), maximumSize)
    if r.load64(16) < grown { r.store64(grown, 16) }
    return ArenaHashMap(r, now: now)
  }

  private static func checkHeader(_ r: Region) throws(ArenaAttachError) {
    guard r.load64(0) == magic else { throw .badMagic(r.load64(0)) }
    guard r.load32(8) == version else { throw .unsupportedVersion(r.load32(8)) }
    let size = r.load64(16)
    guard size >= UInt64(headerSize), size <= UInt64(r.count), size <= maximumSize else {
      throw .badHeader("size \(size) for a region of \(r.count)")
    }
    let slotsAt = r.load64(24)
    let slots = r.load64(32)
    guard slots > 0, slots & (slots - 1) == 0, slots <= maximumSlots, slots <= size / 8,
      slotsAt >= UInt64(headerSize), slotsAt % 8 == 0, slotsAt + slots * 8 <= size
    else { throw .badHeader("slot array \(slotsAt) × \(slots)") }
    let heapStart = r.load64(48)
    let heapTop = r.load64(56)
    guard heapStart >= UInt64(headerSize), heapStart % 64 == 0, heapStart <= heapTop,
      heapTop <= size, heapTop % 64 == 0
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
  /// The slots of the hash table (it doubles when three quarters full).
  public var bucketCount: Int { slotMask + 1 }

  private func addToCount(_ delta: Int) {
    entries = Swift.max(0, entries + delta)  // at most the slot count: no overflow
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

  // MARK: Slots

  /// The 32 hash bits a slot keeps: the table's index comes from them, so
  /// a doubling or a shift needs no entry read.
  @inline(__always) private static func hash32(_ h: UInt64) -> UInt32 {
    UInt32(truncatingIfNeeded: h)
  }

  @inline(__always) private func slotOffset(_ index: Int) -> Int { slotsAt &+ index &* 8 }
  @inline(__always) private func slot(_ index: Int) -> UInt64 { region.load64(slotOffset(index)) }
  @inline(__always) private func setSlot(_ index: Int, _ word: UInt64) {
    region.store64(word, slotOffset(index))
  }
  @inline(__always) private static func slotWord(entry at: Int, hash32: UInt32) -> UInt64 {
    UInt64(hash32) << 32 | UInt64(at >> 6)
  }
  @inline(__always) private static func entry(ofSlot word: UInt64) -> Int {
    Int(truncatingIfNeeded: word & 0xFFFF_FFFF) << 6
  }
  @inline(__always) private static func hash32(ofSlot word: UInt64) -> UInt32 {
    UInt32(truncatingIfNeeded: word >> 32)
  }

  // MARK: Entry checks

  /// Whether `at` may be an entry: in the heap, 64-aligned, its header and
  /// its memory inside the heap.
  @inline(__always) func isEntry(_ at: Int) -> Bool {
    guard at >= heapStart, at & 63 == 0, at <= heapTop - 64 else { return false }
    let sizeClass = Int(region.load8(at + 30))
    guard sizeClass < Self.classCount else { return false }
    return at <= heapTop - (64 << sizeClass)
  }

  @inline(__always) private func keyLength(_ at: Int) -> Int { Int(region.load16(at + 28)) }
  @inline(__always) private func valueLength(_ at: Int) -> Int { Int(region.load32(at + 24)) }
  /// The bytes an entry has for key and value (after `isEntry`).
  @inline(__always) private func payloadCapacity(_ at: Int) -> Int {
    (64 << Int(region.load8(at + 30))) - Self.entryHeader
  }

  /// The entry's CRC over its expiry, lengths, class and bytes, or `nil`
  /// when the lengths do not fit its memory.
  @inline(__always) private func entryCRC(_ at: Int) -> UInt32? {
    let payload = keyLength(at) + valueLength(at)
    guard payload <= payloadCapacity(at) else { return nil }
    return region.crc(at + 16, 16 + payload)  // expiry through the zero byte, then the bytes
  }

  /// Whether the entry is intact: lengths that fit its memory, a CRC that
  /// matches.
  @inline(__always) func isIntact(_ at: Int) -> Bool {
    entryCRC(at) == region.load32(at + 12)
  }

  /// The entry's key bytes (after `isIntact`, which checked the length).
  @inline(__always) private func keyBytes(_ at: Int) -> UnsafeRawBufferPointer {
    region.bytes(at + Self.entryHeader, keyLength(at))
  }

  @inline(__always) private func isExpired(_ at: Int, now: UInt64) -> Bool {
    let expiry = region.load64(at + 16)
    return expiry != 0 && expiry <= now
  }

  // MARK: Lookup

  /// Finds the slot and entry for `key`, dropping damaged and expired
  /// entries met on the way. The probe is bounded by the slot count.
  private func find(_ key: UnsafeRawBufferPointer, hash h: UInt64) -> (index: Int, at: Int)? {
    let want = Self.hash32(h)
    var index = Int(truncatingIfNeeded: want) & slotMask
    var probes = 0
    while probes <= slotMask {
      let word = slot(index)
      if word == 0 { return nil }
      if Self.hash32(ofSlot: word) == want {
        let at = Self.entry(ofSlot: word)
        guard isEntry(at) else {
          // No entry there: the slot goes, the probe sees what shifted in.
          cutSlot(index)
          probes += 1
          continue
        }
        // The length against the caller's and against the entry's memory
        // first, so the comparison never reads past the entry.
        if keyLength(at) == key.count, key.count <= payloadCapacity(at),
          key.count == 0
            || memcmp(region.base + at + Self.entryHeader, key.baseAddress!, key.count) == 0
        {
          guard isIntact(at) else {
            damage += 1
            removeEntry(at, slot: index, free: false)
            return nil
          }
          if region.load64(at + 16) != 0, isExpired(at, now: now()) {
            removeEntry(at, slot: index)
            region.store64(region.load64(88) &+ 1, 88)
            return nil
          }
          return (index, at)
        }
      }
      index = (index + 1) & slotMask
      probes += 1
    }
    return nil
  }

  /// Empties slot `index` and shifts back the slots after it that belong
  /// before it (linear probing's deletion, no tombstones). Bounded by the
  /// slot count; only slots are read.
  private func clearSlot(_ index: Int) {
    var hole = index
    var next = (index + 1) & slotMask
    var steps = 0
    while steps < slotMask {
      let word = slot(next)
      if word == 0 { break }
      let home = Int(truncatingIfNeeded: Self.hash32(ofSlot: word)) & slotMask
      // The entry at `next` may fill the hole unless its home lies
      // cyclically after the hole and up to `next`.
      if (next &- home) & slotMask >= (next &- hole) & slotMask {
        setSlot(hole, word)
        hole = next
      }
      next = (next + 1) & slotMask
      steps += 1
    }
    setSlot(hole, 0)
  }

  /// Drops a slot that points at no entry.
  private func cutSlot(_ index: Int) {
    damage += 1
    clearSlot(index)
    addToCount(-1)
  }

  /// Removes the entry at `at` (whose slot is `index`) from the table and
  /// the LRU, and frees it unless it is damaged: a damaged entry's memory
  /// may be free already or overlap another, and a free list must never
  /// hand the same bytes out twice, so it leaks until `removeAll`.
  private func removeEntry(_ at: Int, slot index: Int, free freeIt: Bool = true) {
    clearSlot(index)
    unlinkLRU(at)
    addToCount(-1)
    if freeIt { free(at) }
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
  func entry(forKeyBytes key: UnsafeRawBufferPointer) -> Int? { find(key, hash: hash(key))?.at }

  /// The value's bytes for a key's bytes, the entry made most recent.
  @usableFromInline
  func valueBytes(forKeyBytes key: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
    guard let (_, at) = find(key, hash: hash(key)) else { return nil }
    touch(at)
    return region.bytes(at + Self.entryHeader + keyLength(at), valueLength(at))
  }

  /// The expiry for a key's bytes.
  @usableFromInline
  func expiry(forKeyBytes key: UnsafeRawBufferPointer) -> UInt64? {
    guard let (_, at) = find(key, hash: hash(key)) else { return nil }
    return region.load64(at + 16)
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
    if let (index, old) = find(key, hash: h) { removeEntry(old, slot: index) }
    guard key.count <= Self.maximumKeyLength else { throw .tooLarge(key.count) }
    let payload = key.count + value.count
    guard payload <= UInt32.max, let sizeClass = Self.sizeClass(for: payload) else {
      throw .tooLarge(payload)
    }
    let at = try allocate(sizeClass)
    let r = region
    r.store64(expiresAt, at + 16)
    r.store32(UInt32(value.count), at + 24)
    r.store16(UInt16(key.count), at + 28)
    r.store8(UInt8(sizeClass), at + 30)
    r.store8(0, at + 31)
    r.copy(key, to: at + Self.entryHeader)
    r.copy(value, to: at + Self.entryHeader + key.count)
    r.store32(entryCRC(at) ?? 0, at + 12)
    var index = makeRoomInTable() ? emptySlot(for: Self.hash32(h)) : nil
    if index == nil {
      // A table full while the count says otherwise: the count was wrong.
      rebuildLRU(excluding: nil)
      index = makeRoomInTable() ? emptySlot(for: Self.hash32(h)) : nil
    }
    guard let index else {
      free(at)
      throw .full
    }
    setSlot(index, Self.slotWord(entry: at, hash32: Self.hash32(h)))
    pushLRU(at)
    addToCount(1)
  }

  /// The first empty slot of the probe sequence of `hash32`, or `nil` when
  /// there is none (a table filled by damage).
  private func emptySlot(for hash32: UInt32) -> Int? {
    var index = Int(truncatingIfNeeded: hash32) & slotMask
    for _ in 0...slotMask {
      if slot(index) == 0 { return index }
      index = (index + 1) & slotMask
    }
    return nil
  }

  /// Keeps the table at most three quarters full: doubles it in the heap
  /// while there is room, else evicts the least recently used. False when
  /// neither works.
  private func makeRoomInTable() -> Bool {
    var recounted = false
    // Each turn doubles the table or drops an entry, but damage can make an
    // eviction drop nothing: bounded by what the table can hold.
    var turns = 0
    while entries >= bucketCount - bucketCount / 4 {
      turns += 1
      guard turns <= 2 * bucketCount + 64 else { return false }
      if (try? rehash(bucketCount: bucketCount * 2)) != nil { continue }
      if evictLeastRecent() { continue }
      // The count came from the region: recount once before giving up.
      guard !recounted else { return false }
      recounted = true
      rebuildLRU(excluding: nil)
    }
    return true
  }

  /// Removes `key`'s entry; returns whether there was one.
  @inlinable @discardableResult
  public func removeValue(forKey key: Key) -> Bool {
    key.withArenaBytes { removeValue(forKeyBytes: $0) }
  }

  /// Removes the entry for a key's bytes; whether there was one.
  @usableFromInline
  func removeValue(forKeyBytes bytes: UnsafeRawBufferPointer) -> Bool {
    guard let (index, at) = find(bytes, hash: hash(bytes)) else { return false }
    removeEntry(at, slot: index)
    return true
  }

  /// Removes every entry (the layout stays, the heap is reset).
  public func removeAll() {
    let r = region
    (r.base + slotsAt).initializeMemory(as: UInt8.self, repeating: 0, count: bucketCount * 8)
    for c in 0..<Self.classCount { r.store64(0, 104 + c * 8) }
    r.store64(0, 64)
    r.store64(0, 72)
    entries = 0
    heapTop = Swift.max(heapStart, roundUp64(slotsAt + bucketCount * 8))
  }

  /// The slot that points at the entry `at`, found by probing from its
  /// key's home (after `isIntact`).
  private func slotIndex(of at: Int) -> Int? {
    let want = Self.hash32(hash(keyBytes(at)))
    let word = Self.slotWord(entry: at, hash32: want)
    var index = Int(truncatingIfNeeded: want) & slotMask
    for _ in 0...slotMask {
      let found = slot(index)
      if found == word { return index }
      if found == 0 { return nil }
      index = (index + 1) & slotMask
    }
    return nil
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
        region.store8(UInt8(sizeClass), at + 30)
        return at
      }
      // Bounded by what the heap can hold, not by the (untrusted) count.
      guard evicted <= (size - heapStart) / 64, evictLeastRecent() else { throw .full }
      evicted += 1
    }
  }

  private func free(_ at: Int) {
    let sizeClass = Int(region.load8(at + 30))
    let list = 104 + sizeClass * 8
    region.store32(0, at + 12)  // a freed entry never passes the CRC again
    // The free list's link takes the LRU links' place (a freed entry is in no list).
    region.store64(region.load64(list), at)
    region.store64(UInt64(at), list)
  }

  /// Pops a free entry of `sizeClass`. A damaged free list is dropped
  /// (its entries leak until `removeAll`), never followed.
  private func popFree(_ sizeClass: Int) -> Int? {
    let list = 104 + sizeClass * 8
    let at = Int(truncatingIfNeeded: region.load64(list))
    if at == 0 { return nil }
    guard isEntry(at), Int(region.load8(at + 30)) == sizeClass else {
      region.store64(0, list)
      damage += 1
      return nil
    }
    region.store64(region.load64(at), list)
    return at
  }

  // MARK: LRU

  private var lruHead: Int { Int(truncatingIfNeeded: region.load64(64)) }
  private var lruTail: Int { Int(truncatingIfNeeded: region.load64(72)) }
  @inline(__always) private func lruPrev(_ at: Int) -> Int { Int(region.load32(at)) << 6 }
  @inline(__always) private func lruNext(_ at: Int) -> Int { Int(region.load32(at + 4)) << 6 }
  @inline(__always) private func setLRUPrev(_ at: Int, _ to: Int) {
    region.store32(UInt32(truncatingIfNeeded: to >> 6), at)
  }
  @inline(__always) private func setLRUNext(_ at: Int, _ to: Int) {
    region.store32(UInt32(truncatingIfNeeded: to >> 6), at + 4)
  }

  private func pushLRU(_ at: Int) {
    let tick = region.load64(360) &+ 1
    region.store64(tick, 360)
    region.store32(UInt32(truncatingIfNeeded: tick), at + 8)
    let head = lruHead
    setLRUPrev(at, 0)
    setLRUNext(at, head)
    if head != 0 && isEntry(head) {
      setLRUPrev(head, at)
    } else {
      region.store64(UInt64(at), 72)
    }
    region.store64(UInt64(at), 64)
  }

  /// Takes the entry out of the LRU list. Links that do not point back at
  /// it are damage: the list is rebuilt from the table.
  private func unlinkLRU(_ at: Int) {
    let prev = lruPrev(at)
    let next = lruNext(at)
    let prevOK = prev == 0 ? lruHead == at : isEntry(prev) && lruNext(prev) == at
    let nextOK = next == 0 ? lruTail == at : isEntry(next) && lruPrev(next) == at
    guard prevOK, nextOK else {
      damage += 1
      return rebuildLRU(excluding: at)
    }
    if prev == 0 {
      region.store64(UInt64(next), 64)
    } else {
      setLRUNext(prev, next)
    }
    if next == 0 {
      region.store64(UInt64(prev), 72)
    } else {
      setLRUPrev(next, prev)
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
    guard tick &- region.load32(at + 8) > UInt32(clamping: count / 2), lruHead != at else {
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
    guard let index = slotIndex(of: tail) else {
      // In the LRU but in no slot: damage; take it off the list alone.
      damage += 1
      unlinkLRU(tail)
      if lruTail == tail { rebuildLRU(excluding: nil) }
      return lruTail != tail
    }
    removeEntry(tail, slot: index)
    region.store64(region.load64(80) &+ 1, 80)
    return true
  }

  /// Rebuilds the LRU list (and the count) from the table: each slot read
  /// once, damaged entries' slots cleared. The order of use is lost; what
  /// the table holds is kept.
  private func rebuildLRU(excluding excluded: Int?) {
    region.store64(0, 64)
    region.store64(0, 72)
    // First the damaged slots go. A clear shifts later slots back, across
    // the end of the array too, so nothing is pushed until no more moves.
    var index = 0
    while index <= slotMask {
      let word = slot(index)
      let at = Self.entry(ofSlot: word)
      if word != 0, !(isEntry(at) && isIntact(at)) {
        damage += 1
        clearSlot(index)  // what shifted into `index` is looked at next
        continue
      }
      index += 1
    }
    // Two slots may lead to one entry (damage): it is pushed once, or the
    // list would loop on it.
    var kept = 0
    var pushed = Set<Int>()
    for index in 0...slotMask {
      let at = Self.entry(ofSlot: slot(index))
      if at != 0, at != excluded, pushed.insert(at).inserted {
        pushLRU(at)
        kept += 1
      }
    }
    entries = kept + (excluded == nil ? 0 : 1)
  }

  // MARK: Growth

  /// Moves the table to a new slot array of `bucketCount` (a power of two,
  /// bigger than now) taken from the heap. Entries stay where they are and
  /// keep their order of use; only slots move, by the hash bits they hold.
  /// Insertions do this by themselves when the table is three quarters
  /// full; call it to size the table at once after attaching a bigger
  /// region.
  public func rehash(bucketCount newCount: Int) throws(SetError) {
    guard newCount <= size / 16, UInt64(newCount) <= Self.maximumSlots else { throw .full }
    let slots = nextPowerOfTwo(newCount)
    guard slots > bucketCount else { return }
    let at = heapTop
    // Rounded to 64 so that the entries allocated after it stay aligned.
    let arrayBytes = roundUp64(slots * 8)
    guard at + arrayBytes <= size else { throw .full }
    heapTop = at + arrayBytes
    (region.base + at).initializeMemory(as: UInt8.self, repeating: 0, count: arrayBytes)
    let (oldAt, oldMask) = (slotsAt, slotMask)
    slotsAt = at
    slotMask = slots - 1
    var moved = 0
    for index in 0...oldMask {
      let word = region.load64(oldAt + index * 8)
      guard word != 0 else { continue }
      guard isEntry(Self.entry(ofSlot: word)),
        let free = emptySlot(for: Self.hash32(ofSlot: word))
      else {
        damage += 1
        continue
      }
      setSlot(free, word)
      moved += 1
    }
    region.store64(UInt64(at), 24)
    region.store64(UInt64(slots), 32)
    entries = moved
  }
}

// MARK: Sequence

extension ArenaHashMap: Sequence {
  /// Walks the slots in order; damaged and expired entries are skipped.
  /// Do not mutate the map while walking.
  public struct Iterator: IteratorProtocol {
    let map: ArenaHashMap
    var index = 0
    let now: UInt64

    /// The next live entry, or `nil` after the last slot.
    public mutating func next() -> (key: Key, value: Value)? {
      while index < map.bucketCount {
        let at = map.entryInSlot(index)
        index += 1
        guard at != 0, map.isEntry(at), map.isIntact(at) else { continue }
        let expiry = map.region.load64(at + 16)
        if expiry != 0 && expiry <= now { continue }
        let keyLength = Int(map.region.load16(at + 28))
        let valueLength = Int(map.region.load32(at + 24))
        let start = at + ArenaHashMap.entryHeader
        guard let key = Key(arenaBytes: map.region.bytes(start, keyLength)),
          let value = Value(arenaBytes: map.region.bytes(start + keyLength, valueLength))
        else { continue }
        return (key, value)
      }
      return nil
    }
  }

  /// The entry slot `index` points at (0 for none), for the iterator.
  fileprivate func entryInSlot(_ index: Int) -> Int { Self.entry(ofSlot: slot(index)) }

  /// An iterator over the live entries, in slot order.
  public func makeIterator() -> Iterator { Iterator(map: self, now: now()) }
}

/// `n` rounded up to a multiple of 64, the alignment of every entry.
func roundUp64(_ n: Int) -> Int { (n + 63) & ~63 }
