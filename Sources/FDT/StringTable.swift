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
// Here every suffix of every added string is a key of one dictionary, so a
// lookup is a single hash of the name and an insertion costs the name's
// length in hashes: linear in the number of names. The bytes come out equal
// to the reference's.

struct StringTable {
  let newestFirst: Bool
  /// The strings in the order they were added, each with its NUL.
  private(set) var bytesInAddOrder: [UInt8] = []
  /// Start of each added string in `bytesInAddOrder`.
  private var starts: [Int] = []
  /// Suffix -> its position, encoded as described by `position(of:)`.
  private var positions: [String: Int] = [:]

  init(newestFirst: Bool) {
    self.newestFirst = newestFirst
  }

  var size: Int { bytesInAddOrder.count }

  /// Returns the position of `name` in the table, adding it if no string
  /// in the table ends with it. The position is final for dtc's order;
  /// for libfdt's order it is a distance from the end of the table,
  /// which `finalOffset(_:)` turns into an offset once the table is
  /// complete.
  mutating func position(of name: String) -> (position: Int, added: Bool) {
    if let found = positions[name] {
      return (found, false)
    }
    let start = bytesInAddOrder.count
    starts.append(start)
    bytesInAddOrder.append(contentsOf: name.utf8)
    bytesInAddOrder.append(0)
    let end = bytesInAddOrder.count  // one past the NUL
    // Every suffix of `name`, the empty one included, now has an occurrence
    // in this string. libfdt prefers the newest such string, dtc the oldest.
    var suffix = Substring(name)
    while true {
      let suffixStart = end - 1 - suffix.utf8.count
      // libfdt's final offset is (table size - end) + (suffixStart - start).
      let encoded = newestFirst ? end - (suffixStart - start) : suffixStart
      if newestFirst {
        positions[String(suffix)] = encoded
      } else if positions[String(suffix)] == nil {
        positions[String(suffix)] = encoded
      }
      if suffix.isEmpty { break }
      suffix = suffix.dropFirst()
    }
    return (positions[name]!, true)
  }

  /// Removes the string added last, which must have been added by the
  /// immediately preceding `position(of:)` call (used to undo an insertion
  /// when the structure block has no room, as libfdt does).
  mutating func removeLast(_ name: String) {
    guard let start = starts.popLast() else { return }
    bytesInAddOrder.removeSubrange(start...)
    // Rebuild the suffixes this string owned. Rare (only on "no space"),
    // so a rebuild from the remaining strings is acceptable.
    positions.removeAll(keepingCapacity: true)
    let kept = starts
    let bytes = bytesInAddOrder
    starts = []
    bytesInAddOrder = []
    for (index, s) in kept.enumerated() {
      let e = index + 1 < kept.count ? kept[index + 1] : bytes.count
      let string = String(decoding: bytes[s..<(e - 1)], as: UTF8.self)
      _ = position(of: string)
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
    var out = [UInt8]()
    out.reserveCapacity(bytesInAddOrder.count)
    var end = bytesInAddOrder.count
    for start in starts.reversed() {
      out.append(contentsOf: bytesInAddOrder[start..<end])
      end = start
    }
    return out
  }
}
