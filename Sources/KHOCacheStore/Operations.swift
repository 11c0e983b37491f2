/// How a storage command treats an existing item (memcached's NREAD_*).
public enum StoreMode: Sendable, Equatable {
  /// Store unconditionally.
  case set
  /// Store only if the key is absent.
  case add
  /// Store only if the key is present.
  case replace
  /// Add the data after the existing value (flags and expiry are kept).
  case append
  /// Add the data before the existing value (flags and expiry are kept).
  case prepend
  /// Store only if the item's CAS is still the given one.
  case cas(UInt64)
}

/// The outcome of a storage command, as memcached words it.
public enum StoreResult: Sendable, Equatable {
  /// "STORED"
  case stored
  /// "NOT_STORED": add on a present key, replace/append/prepend on an absent one.
  case notStored
  /// "EXISTS": cas with a stale CAS value.
  case exists
  /// "NOT_FOUND": cas on an absent key.
  case notFound
}

extension StoreCore {
  /// A get (or gat when `touch` is given): the live item or 0, with the hit
  /// counted and the item moved towards the LRU head.
  func lookup(_ key: UnsafeRawBufferPointer, touch exptime: Int64?) -> Int {
    let item = find(key, hash: keyHash(key), countDead: true)
    if let exptime {
      count(.cmdTouch)
      count(item != 0 ? .touchHits : .touchMisses)
      if item != 0 { memory.setU32(item + ItemField.exptime, clock.expiry(exptime, now: now)) }
    } else {
      count(.cmdGet)
      count(item != 0 ? .getHits : .getMisses)
    }
    if item != 0 {
      // memcached's do_item_bump: a fetch marks the item fetched (`mg h`).
      if !frozen { setMetaFlag(item, ItemField.fetched) }
      bump(item)
    }
    return item
  }

  func store(
    _ mode: StoreMode, key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer, flags: UInt32,
    exptime: Int64
  ) throws(CacheOperationError) -> StoreResult {
    count(.cmdSet)
    let hash = keyHash(key)
    // A set replaces the old item whatever it holds: no need to verify it.
    let old = find(key, hash: hash, verify: mode != .set)
    if let refusal = precondition(mode, old: old) { return refusal }
    pinned = old
    let item: Int
    do {
      item = try build(
        mode, old: old, key: key, hash: hash, value: value, flags: flags, exptime: exptime)
    } catch {
      pinned = 0
      // memcached drops the old value when a set fails, so no stale data stays.
      if mode == .set && old != 0 { unlink(old, reason: .removed) }
      throw error
    }
    pinned = 0
    replace(old, with: item)
    return .stored
  }

  /// The result when `mode` forbids storing over `old`, else nil.
  private func precondition(_ mode: StoreMode, old: Int) -> StoreResult? {
    switch mode {
    case .set:
      return nil
    case .add:
      if old != 0 {
        bump(old)
        return .notStored
      }
      return nil
    case .replace, .append, .prepend:
      return old == 0 ? .notStored : nil
    case .cas(let expected):
      if old == 0 {
        count(.casMisses)
        return .notFound
      }
      if memory.u64(old + ItemField.cas) != expected {
        count(.casBadval)
        return .exists
      }
      count(.casHits)
      return nil
    }
  }

  func build(
    _ mode: StoreMode, old: Int, key: UnsafeRawBufferPointer, hash: UInt32,
    value: UnsafeRawBufferPointer,
    flags: UInt32, exptime: Int64
  ) throws(CacheOperationError) -> Int {
    switch mode {
    case .append, .prepend:
      let oldValue = self.value(old)
      let front = mode == .append ? oldValue : value
      let back = mode == .append ? value : oldValue
      return try makeItem(
        key: key, hash: hash, flags: memory.u32(old + ItemField.flags),
        exptime: memory.u32(old + ItemField.exptime), valueLength: front.count + back.count
      ) { target in
        target.copyMemory(from: front)
        UnsafeMutableRawBufferPointer(rebasing: target[front.count...]).copyMemory(from: back)
      }
    default:
      return try makeItem(
        key: key, hash: hash, flags: flags, exptime: clock.expiry(exptime, now: now),
        valueLength: value.count
      ) { $0.copyMemory(from: value) }
    }
  }

  func delete(_ key: UnsafeRawBufferPointer) -> Bool {
    let item = find(key, hash: keyHash(key))
    count(item != 0 ? .deleteHits : .deleteMisses)
    if item != 0 { unlink(item, reason: .removed) }
    return item != 0
  }

  func touch(_ key: UnsafeRawBufferPointer, exptime: Int64) -> Bool {
    let item = lookup(key, touch: exptime)
    return item != 0
  }

  /// incr/decr with memcached's semantics: 64-bit, incr wraps, decr floors
  /// at 0; the result is written in place (space-padded) when it fits, as
  /// memcached does, else into a new item.
  func arithmetic(_ key: UnsafeRawBufferPointer, increment: Bool, delta: UInt64)
    throws(CacheOperationError)
    -> UInt64?
  {
    let hash = keyHash(key)
    let item = find(key, hash: hash)
    guard item != 0 else {
      count(increment ? .incrMisses : .decrMisses)
      return nil
    }
    guard let current = parseDecimal(value(item)) else { throw .nonNumeric }
    count(increment ? .incrHits : .decrHits)
    let result = increment ? current &+ delta : (delta > current ? 0 : current - delta)
    let digits = Array(String(result).utf8)
    if digits.count <= valueLength(item) {
      let target = mutableValue(item)
      target.copyBytes(from: digits)
      for index in digits.count..<target.count { target[index] = UInt8(ascii: " ") }
      seal(item)
      memory.setU64(item + ItemField.cas, nextCas())
      bump(item)
      return result
    }
    pinned = item
    defer { pinned = 0 }
    let fresh = try withBytes(digits) { bytes throws(CacheOperationError) in
      try makeItem(
        key: key, hash: hash, flags: memory.u32(item + ItemField.flags),
        exptime: memory.u32(item + ItemField.exptime), valueLength: bytes.count
      ) { $0.copyMemory(from: bytes) }
    }
    pinned = 0
    replace(item, with: fresh)
    return result
  }

  /// flush_all: items last accessed before the horizon (and, for an
  /// immediate flush, every CAS handed out so far) are dead from then on,
  /// found lazily, as in memcached.
  func flush(delay: Int64) {
    count(.cmdFlush)
    let newOldest = delay > 0 ? clock.expiry(delay, now: now) : now
    let oldestLive = UInt64(newOldest) &- 1
    memory.setU64(Header.oldestLive, oldestLive)
    if oldestLive <= UInt64(now) { memory.setU64(Header.oldestCas, nextCas()) }
  }
}

/// memcached's `safe_strtoull` on an item value: optional leading white
/// space, digits, then the end or white space; no overflow, no minus sign
/// (but "-0" is 0, as strtoull has it).
func parseDecimal(_ bytes: UnsafeRawBufferPointer) -> UInt64? {
  var index = 0
  while index < bytes.count && isSpace(bytes[index]) { index += 1 }
  var negative = false
  if index < bytes.count && (bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-"))
  {
    negative = bytes[index] == UInt8(ascii: "-")
    index += 1
  }
  let start = index
  var value: UInt64 = 0
  while index < bytes.count, bytes[index] >= 48, bytes[index] <= 57 {
    let (times10, o1) = value.multipliedReportingOverflow(by: 10)
    let (sum, o2) = times10.addingReportingOverflow(UInt64(bytes[index] - 48))
    if o1 || o2 { return nil }
    value = sum
    index += 1
  }
  guard index > start else { return nil }
  guard index == bytes.count || isSpace(bytes[index]) else { return nil }
  if negative && value != 0 { return nil }
  return value
}

@inline(__always) func isSpace(_ byte: UInt8) -> Bool {
  byte == 32 || (byte >= 9 && byte <= 13)
}
