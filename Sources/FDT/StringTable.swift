// The strings block, built in linear time in the number of names.
//
// Both references deduplicate by suffix: a name that ends another name
// already in the table points into it ("reg" can be found inside
// "interrupt-reg"). They differ in which occurrence they pick and in the
// final order:
//
// - libfdt's sequential writer (`fdt_find_add_string_`) places each new
//   string *below* the previous ones and scans from the lowest address with
//   `memcmp`, so a name is found in the most recently added string that ends
//   with it, and the final table lists strings newest first. That scan is
//   quadratic in the number of distinct names.
// - dtc (`stringtable_insert`) appends and scans from the start, so a name
//   is found in the earliest string that ends with it, and the table lists
//   strings in first-use order.
//
// Here every suffix of every added string is a key of one open-addressing
// hash table over the bytes (names are compared byte for byte, as libfdt's
// `memcmp` does). The hashes of all suffixes of a string come from one pass
// from its last byte to its first, so a lookup costs one hash of the name
// and an insertion a few probes per byte: linear in the number of names.
// The bytes come out equal to the reference's.

struct StringTable {
  let newestFirst: Bool
  /// The strings in the order they were added, each with its NUL.
  private(set) var bytesInAddOrder: [UInt8] = []
  /// Start of each added string in `bytesInAddOrder`.
  private var starts: [Int] = []

  /// One key: a suffix, named by where one of its occurrences starts in
  /// `bytesInAddOrder`, and its position, encoded as `position(of:)` says.
  private struct Slot {
    /// The key's hash with the top bit set; 0 for an empty slot.
    var hash: UInt64
    var start: UInt32
    var length: UInt32
    var encoded: UInt32
  }
  private var slots: [Slot] = Array(
    repeating: Slot(hash: 0, start: 0, length: 0, encoded: 0), count: 64)
  private var used = 0
  /// Suffix hashes of the string being added, longest suffix last.
  private var scratch: [UInt64] = []

  init(newestFirst: Bool) {
    self.newestFirst = newestFirst
  }

  var size: Int { bytesInAddOrder.count }

  // MARK: - Hashing

  private static let multiplier: UInt64 = 0x100_0000_01b3  // FNV prime, odd

  /// Hash of a key from its polynomial sum and length.
  @inline(__always)
  private static func finish(_ sum: UInt64, _ length: Int) -> UInt64 {
    var x = sum ^ (UInt64(truncatingIfNeeded: length) &* 0x9e37_79b9_7f4a_7c15)
    x ^= x >> 31
    x &*= 0xbf58_476d_1ce4_e5b9
    x ^= x >> 29
    return x | (1 << 63)
  }

  /// The hash of `bytes`. A suffix's polynomial sum extends to the next
  /// longer suffix by one multiply-add: `sum + (byte + 1) * multiplier^length`.
  @inline(__always)
  private static func hash(_ bytes: UnsafeBufferPointer<UInt8>) -> UInt64 {
    var sum: UInt64 = 0
    var power: UInt64 = 1
    var i = bytes.count
    while i > 0 {
      i -= 1
      sum &+= (UInt64(bytes[i]) &+ 1) &* power
      power &*= multiplier
    }
    return finish(sum, bytes.count)
  }

  /// The slot holding `key` (with hash `hash`), or the empty slot where it
  /// would go.
  @inline(__always)
  private static func find(
    _ hash: UInt64, _ key: UnsafeRawPointer, _ length: Int,
    _ table: UnsafeBufferPointer<Slot>, _ strings: UnsafeRawPointer
  ) -> (index: Int, found: Bool) {
    let mask = table.count - 1
    var index = Int(truncatingIfNeeded: hash) & mask
    while true {
      let slot = table[index]
      if slot.hash == 0 { return (index, false) }
      if slot.hash == hash && Int(slot.length) == length
        && equalBytes(strings + Int(slot.start), key, length)
      {
        return (index, true)
      }
      index = (index + 1) & mask
    }
  }

  // MARK: - Lookup and insertion

  /// Returns the position of `name` in the table, adding it if no string
  /// in the table ends with it. The position is final for dtc's order;
  /// for libfdt's order it is a distance from the end of the table,
  /// which `finalOffset(_:)` turns into an offset once the table is
  /// complete.
  mutating func position(of name: String) -> (position: Int, added: Bool) {
    var name = name
    return name.withUTF8 { position(of: $0) }
  }

  /// As `position(of:)`, for the name's UTF-8 bytes (without NUL).
  mutating func position(of name: UnsafeBufferPointer<UInt8>) -> (position: Int, added: Bool) {
    let length = name.count
    let h = Self.hash(name)
    let hit: UInt32? = slots.withUnsafeBufferPointer { table in
      bytesInAddOrder.withUnsafeBytes { strings in
        guard !strings.isEmpty, let stringsBase = strings.baseAddress else { return nil }
        // The empty name compares no bytes: any pointer does.
        let key = name.baseAddress.map(UnsafeRawPointer.init) ?? stringsBase
        let (i, found) = Self.find(h, key, length, table, stringsBase)
        return found ? table[i].encoded : nil
      }
    }
    if let hit { return (Int(hit), false) }
    return (add(name), true)
  }

  /// Appends `name` and makes every suffix of it a key; returns the
  /// encoded position of the whole name.
  private mutating func add(_ name: UnsafeBufferPointer<UInt8>) -> Int {
    let start = bytesInAddOrder.count
    let length = name.count
    precondition(start + length + 1 <= Int(UInt32.max), "string table larger than 4 GiB")
    starts.append(start)
    bytesInAddOrder.append(contentsOf: name)
    bytesInAddOrder.append(0)
    let end = bytesInAddOrder.count  // one past the NUL

    // Hashes of every suffix, the empty one first.
    scratch.removeAll(keepingCapacity: true)
    var sum: UInt64 = 0
    var power: UInt64 = 1
    scratch.append(Self.finish(0, 0))
    var i = length
    while i > 0 {
      i -= 1
      sum &+= (UInt64(name[i]) &+ 1) &* power
      power &*= Self.multiplier
      scratch.append(Self.finish(sum, length - i))
    }

    while (used + length + 1) * 4 > slots.count * 3 { grow() }

    // Every suffix of `name`, the empty one included, now has an occurrence
    // in this string. libfdt prefers the newest such string, dtc the oldest.
    // The keys are closed under suffixes: going from the longest suffix
    // down, once one is present all shorter ones are too, and dtc keeps
    // them as they are.
    var whole = 0
    let newestFirst = self.newestFirst
    let hashes = scratch
    var table = slots
    slots = []  // keep `table` uniquely referenced
    var used = self.used
    table.withUnsafeMutableBufferPointer { table in
      bytesInAddOrder.withUnsafeBytes { strings in
        let stringsBase = strings.baseAddress!
        var suffixLength = length
        while suffixLength >= 0 {
          let suffixStart = end - 1 - suffixLength
          // libfdt's final offset is (table size - end) + (suffixStart - start).
          let encoded = newestFirst ? end - (suffixStart - start) : suffixStart
          let h = hashes[suffixLength]
          let (index, found) = Self.find(
            h, stringsBase + suffixStart, suffixLength, UnsafeBufferPointer(table), stringsBase)
          if found {
            if !newestFirst { break }
            table[index].start = UInt32(suffixStart)
            table[index].encoded = UInt32(encoded)
          } else {
            table[index] = Slot(
              hash: h, start: UInt32(suffixStart), length: UInt32(suffixLength),
              encoded: UInt32(encoded))
            used += 1
          }
          if suffixLength == length { whole = encoded }
          suffixLength -= 1
        }
      }
    }
    slots = table
    self.used = used
    return whole
  }

  /// Doubles the table.
  private mutating func grow() {
    let old = slots
    slots = Array(
      repeating: Slot(hash: 0, start: 0, length: 0, encoded: 0), count: old.count * 2)
    slots.withUnsafeMutableBufferPointer { table in
      let mask = table.count - 1
      for slot in old where slot.hash != 0 {
        var index = Int(truncatingIfNeeded: slot.hash) & mask
        while table[index].hash != 0 { index = (index + 1) & mask }
        table[index] = slot
      }
    }
  }

  /// Removes the string added last, which must have been added by the
  /// immediately preceding `position(of:)` call (used to undo an insertion
  /// when the structure block has no room, as libfdt does).
  mutating func removeLast(_ name: String) {
    guard let start = starts.popLast() else { return }
    bytesInAddOrder.removeSubrange(start...)
    // Rebuild the suffixes this string owned. Rare (only on "no space"),
    // so a rebuild from the remaining strings is acceptable.
    let kept = starts
    let bytes = bytesInAddOrder
    starts = []
    bytesInAddOrder = []
    bytesInAddOrder.reserveCapacity(bytes.count)
    slots = Array(repeating: Slot(hash: 0, start: 0, length: 0, encoded: 0), count: 64)
    used = 0
    bytes.withUnsafeBufferPointer { all in
      for (index, s) in kept.enumerated() {
        let e = index + 1 < kept.count ? kept[index + 1] : all.count
        _ = add(UnsafeBufferPointer(rebasing: all[s..<(e - 1)]))
      }
    }
  }

  /// The offset of an encoded position in the final table.
  @inline(__always)
  func finalOffset(_ encoded: Int) -> Int {
    newestFirst ? size - encoded : encoded
  }

  /// The final table's bytes.
  func finalBytes() -> [UInt8] {
    if !newestFirst { return bytesInAddOrder }
    return [UInt8](unsafeUninitializedCapacity: bytesInAddOrder.count) { out, count in
      bytesInAddOrder.withUnsafeBufferPointer { src in
        var at = 0
        var end = src.count
        for start in starts.reversed() {
          let piece = UnsafeBufferPointer(rebasing: src[start..<end])
          _ = UnsafeMutableBufferPointer(rebasing: out[at..<(at + piece.count)]).initialize(
            fromContentsOf: piece)
          at += piece.count
          end = start
        }
        count = at
      }
    }
  }
}

/// Whether `count` bytes at `a` and `b` are equal.
@inline(__always)
func equalBytes(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ count: Int) -> Bool {
  var i = 0
  while i + 8 <= count {
    if a.loadUnaligned(fromByteOffset: i, as: UInt64.self)
      != b.loadUnaligned(fromByteOffset: i, as: UInt64.self)
    {
      return false
    }
    i += 8
  }
  while i < count {
    if a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) {
      return false
    }
    i += 1
  }
  return true
}
