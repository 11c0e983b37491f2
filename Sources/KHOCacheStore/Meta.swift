// What memcached's meta commands (mg, ms, md, ma) need from the store,
// following memcached 1.6.18's process_m*_command and do_store_item: the
// item bits they read and set (fetched, win token sent, stale, binary key)
// live in the item header's `metaFlags` byte, so they survive an upgrade.

/// One item as a meta command sees it, valid only inside the closure it is
/// passed to (the store lock is held): read it, change its expiry or its
/// meta bits, copy what you need.
public struct MetaItem {
  let core: StoreCore
  let item: Int

  /// The key bytes.
  public var key: UnsafeRawBufferPointer { core.key(item) }
  /// The value bytes.
  public var value: UnsafeRawBufferPointer { core.value(item) }
  /// The client flags.
  public var flags: UInt32 { core.memory.u32(item + ItemField.flags) }
  /// The CAS unique.
  public var cas: UInt64 { core.memory.u64(item + ItemField.cas) }
  /// Seconds to live as memcached prints them (`t`): -1 for never, else
  /// the expiry minus now, as an unsigned 32-bit number.
  public var remainingSeconds: Int64 {
    let exptime = core.memory.u32(item + ItemField.exptime)
    return exptime == 0 ? -1 : Int64(exptime &- core.now)
  }
  /// Seconds since the item was last accessed (`l`).
  public var secondsSinceAccess: UInt32 { core.now &- core.memory.u32(item + ItemField.time) }
  /// Whether the item was fetched since it was stored (`h`).
  public var fetched: Bool { has(ItemField.fetched) }
  /// Whether a client was already handed the win token (`Z`).
  public var tokenSent: Bool { has(ItemField.tokenSent) }
  /// Whether the item was invalidated (`X`).
  public var stale: Bool { has(ItemField.stale) }
  /// Whether the key was stored base64-encoded (`b`).
  public var binaryKey: Bool { has(ItemField.binaryKey) }
  /// The size class the item lives in.
  public var classId: Int { core.classId(item) }
  /// Bytes the item takes in its chunk (header, key, value).
  public var totalSize: Int { core.totalSize(item) }

  /// Whether the item expires before `exptime` (memcached exptime), as
  /// `mg R` asks: never-expiring items never do.
  public func expiresBefore(_ exptime: Int64) -> Bool {
    let own = core.memory.u32(item + ItemField.exptime)
    return own != 0 && own < core.clock.expiry(exptime, now: core.now)
  }

  /// Sets the expiry (memcached exptime). Does nothing while frozen.
  public func setExptime(_ exptime: Int64) {
    guard !core.frozen else { return }
    core.memory.setU32(item + ItemField.exptime, core.clock.expiry(exptime, now: core.now))
  }

  /// Records that this client won the right to recache the item.
  public func markTokenSent() {
    guard !core.frozen else { return }
    core.setMetaFlag(item, ItemField.tokenSent)
  }

  private func has(_ bit: UInt8) -> Bool {
    core.memory.u8(item + ItemField.metaFlags) & bit != 0
  }
}

/// What `ms` asks for besides the classic storage modes.
public struct MetaStoreOptions: Sendable, Equatable {
  /// `C`: the CAS value append and prepend compare with (0 compares with
  /// nothing); a `.cas` mode compares with its own.
  public var compareCas: UInt64 = 0
  /// `I` with a compare-and-swap: a value older than the item's may
  /// still be stored, marked stale.
  public var invalidate = false
  /// `b`: the key arrived base64-encoded.
  public var binaryKey = false

  /// Options with nothing asked.
  public init(compareCas: UInt64 = 0, invalidate: Bool = false, binaryKey: Bool = false) {
    self.compareCas = compareCas
    self.invalidate = invalidate
    self.binaryKey = binaryKey
  }
}

/// What `md` and `ma` report when they met an item whose CAS differs.
public enum MetaOutcome: Sendable, Equatable {
  /// Done (HD).
  case done
  /// No such item (NF).
  case notFound
  /// The CAS given did not match (EX).
  case casMismatch
}

extension StoreCore {
  @inline(__always) func setMetaFlag(_ item: Int, _ bit: UInt8) {
    let bits = memory.u8(item + ItemField.metaFlags)
    // Every get hit sets `fetched`: write only when it changes, so hot
    // items' headers stay clean in the other cores' caches.
    if bits & bit == 0 { memory.setU8(item + ItemField.metaFlags, bits | bit) }
  }

  @inline(__always) func clearMetaFlag(_ item: Int, _ bit: UInt8) {
    memory.setU8(item + ItemField.metaFlags, memory.u8(item + ItemField.metaFlags) & ~bit)
  }

  /// memcached's do_store_item with the meta protocol's CAS rules: a CAS
  /// applies to every mode (append/prepend refuse a mismatch with EXISTS),
  /// and with `invalidate` an older CAS stores a stale value.
  func metaStore(
    _ mode: StoreMode, key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer, flags: UInt32,
    exptime: Int64, options: MetaStoreOptions
  ) throws(CacheOperationError) -> (StoreResult, UInt64) {
    count(.cmdSet)
    let hash = keyHash(key)
    let old = find(key, hash: hash)
    // A compare-and-swap compares with its own value; the other modes
    // with the one in `options` (0: none).
    var compare = options.compareCas
    if case .cas(let expected) = mode { compare = expected }
    var keepStale = false
    if old != 0 {
      let oldCas = memory.u64(old + ItemField.cas)
      let match = compare != 0 && compare == oldCas
      let staleOk = compare != 0 && options.invalidate && compare < oldCas
      switch mode {
      case .add:
        bump(old)
        return (.notStored, 0)
      case .cas:
        guard match || staleOk else {
          count(.casBadval)
          return (.exists, 0)
        }
        count(.casHits)
        keepStale = !match
      case .append, .prepend:
        if compare != 0 && !match { return (.exists, 0) }
      case .set, .replace:
        break
      }
    } else {
      switch mode {
      case .cas:
        count(.casMisses)
        return (.notFound, 0)
      case .replace, .append, .prepend:
        return (.notStored, 0)
      case .set, .add:
        break
      }
    }
    pinned = old
    defer { pinned = 0 }
    let buildMode: StoreMode = mode.isCas ? .set : mode
    let item = try build(
      buildMode, old: old, key: key, hash: hash, value: value, flags: flags, exptime: exptime)
    if keepStale {
      // The stale value keeps the item's expiry, stale bit and token.
      memory.setU32(item + ItemField.exptime, memory.u32(old + ItemField.exptime))
      setMetaFlag(item, ItemField.stale)
      if memory.u8(old + ItemField.metaFlags) & ItemField.tokenSent != 0 {
        setMetaFlag(item, ItemField.tokenSent)
      }
    }
    // memcached marks the item it read the data into; append and prepend
    // store a fresh copy joined with the old value, unmarked.
    if options.binaryKey && mode != .append && mode != .prepend {
      setMetaFlag(item, ItemField.binaryKey)
    }
    pinned = 0
    replace(old, with: item)
    return (.stored, memory.u64(item + ItemField.cas))
  }
}

extension StoreMode {
  /// Whether this is a compare-and-swap.
  public var isCas: Bool {
    if case .cas = self { return true }
    return false
  }
}

extension CacheStore {
  /// mg: calls `body` with the live item (or nil), under the lock. With
  /// `vivify` a miss creates an empty item first (`created` is then
  /// true). Unless `noUpdate`, the item is marked fetched and bumped after
  /// `body` ran, so `body` sees the bits from before this fetch.
  /// - Parameters:
  ///   - key: the key's bytes.
  ///   - vivify: create an empty item on a miss (`N`).
  ///   - mutates: `body` may change the item (`T`, `N`, `R`, a win): such
  ///     a command waits for a freeze to end.
  ///   - touches: counted as a touch (`T`) rather than a get.
  ///   - noUpdate: leave the fetched bit and the LRU position alone (`u`).
  ///   - body: reads (and may change) the item; `created` says it was just
  ///     vivified.
  /// - Throws: `.frozen` (only when `mutates` or `vivify`), `.badKey`.
  public func metaGet<R>(
    _ key: UnsafeRawBufferPointer, vivify: Bool, mutates: Bool, touches: Bool, noUpdate: Bool,
    _ body: (MetaItem?, _ created: Bool) -> R
  ) throws(CacheOperationError) -> R {
    if key.isEmpty || key.count > CacheLimits.maxKeyLength { throw .badKey }
    return try locked { core throws(CacheOperationError) in
      if (mutates || vivify) && core.frozen { throw .frozen }
      let hash = keyHash(key)
      var item = core.find(key, hash: hash, countDead: true)
      var created = false
      if item == 0 && vivify {
        if let fresh = try? core.makeItem(
          key: key, hash: hash, flags: 0, exptime: 0, valueLength: 0, fill: { _ in })
        {
          // memcached does not mark a vivified item's key binary (`b`).
          core.replace(0, with: fresh)
          item = fresh
          created = true
        }
      }
      core.count(touches ? .cmdTouch : .cmdGet)
      if touches {
        core.count(item != 0 ? .touchHits : .touchMisses)
      } else {
        core.count(item != 0 ? .getHits : .getMisses)
      }
      let result = body(item == 0 ? nil : MetaItem(core: core, item: item), created)
      if item != 0 && !noUpdate && !core.frozen {
        core.setMetaFlag(item, ItemField.fetched)
        core.bump(item)
      }
      return result
    }
  }

  /// ms: stores as `store` does, with the meta CAS rules.
  /// - Returns: memcached's verdict and, when stored, the new CAS.
  /// - Throws: `.frozen`, `.badKey`, `.tooLarge`, `.outOfMemory`.
  public func metaStore(
    _ mode: StoreMode, key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer,
    flags: UInt32, exptime: Int64, options: MetaStoreOptions
  ) throws(CacheOperationError) -> (StoreResult, cas: UInt64) {
    try mutating(key) { core throws(CacheOperationError) in
      try core.metaStore(
        mode, key: key, value: value, flags: flags, exptime: exptime, options: options)
    }
  }

  /// Counts an `ms` refused as too large before its data was read and
  /// drops the old item, whatever the mode, as memcached's mset does.
  public func refuseTooLargeMeta(_ key: UnsafeRawBufferPointer) {
    _ = try? mutating(key) { core in
      core.count(.storeTooLarge)
      let item = core.find(key, hash: keyHash(key))
      if item != 0 { core.unlink(item, reason: .removed) }
    }
  }

  /// md: deletes the item, or with `invalidate` marks it stale (new CAS,
  /// win token free again, expiry `exptime` when given). With a nonzero
  /// `compareCas`, only if the item's CAS is that.
  /// - Throws: `.frozen`, `.badKey`.
  public func metaDelete(
    _ key: UnsafeRawBufferPointer, compareCas: UInt64?, invalidate: Bool, exptime: Int64?
  ) throws(CacheOperationError) -> MetaOutcome {
    try mutating(key) { core in
      let item = core.find(key, hash: keyHash(key))
      guard item != 0 else {
        core.count(.deleteMisses)
        return .notFound
      }
      if let compareCas, core.memory.u64(item + ItemField.cas) != compareCas {
        core.count(.deleteMisses)
        return .casMismatch
      }
      guard invalidate else {
        core.count(.deleteHits)
        core.unlink(item, reason: .removed)
        return .done
      }
      if let exptime {
        core.memory.setU32(item + ItemField.exptime, core.clock.expiry(exptime, now: core.now))
      }
      core.setMetaFlag(item, ItemField.stale)
      core.clearMetaFlag(item, ItemField.tokenSent)
      core.memory.setU64(item + ItemField.cas, core.nextCas())
      return .done
    }
  }

  /// ma: incr/decr as `arithmetic`, refusing a nonzero `compareCas` that
  /// differs, creating the item with `initial` when `vivify` and absent;
  /// then calls `body` with the item (nil when absent or refused).
  /// - Returns: the outcome, whether the item was created, and `body`'s result.
  /// - Throws: `.frozen`, `.badKey`, `.nonNumeric`, `.outOfMemory`.
  public func metaArithmetic<R>(
    _ key: UnsafeRawBufferPointer, increment: Bool, delta: UInt64, compareCas: UInt64,
    vivify: Bool, initial: UInt64, _ body: (MetaItem?, _ created: Bool) -> R
  ) throws(CacheOperationError) -> (MetaOutcome, R) {
    try mutating(key) { core throws(CacheOperationError) in
      let hash = keyHash(key)
      let item = core.find(key, hash: hash)
      if item != 0 {
        // memcached's do_add_delta: an empty value is refused before the CAS.
        if core.valueLength(item) == 0 { throw .nonNumeric }
        if compareCas != 0 && core.memory.u64(item + ItemField.cas) != compareCas {
          return (.casMismatch, body(nil, false))
        }
        _ = try core.arithmetic(key, increment: increment, delta: delta)
        let updated = core.find(key, hash: hash)
        return (.done, body(MetaItem(core: core, item: updated), false))
      }
      guard vivify else {
        core.count(increment ? .incrMisses : .decrMisses)
        return (.notFound, body(nil, false))
      }
      let digits = Array(String(initial).utf8)
      let fresh = try core.makeItem(
        key: key, hash: hash, flags: 0, exptime: 0, valueLength: digits.count
      ) { target in digits.withUnsafeBytes { target.copyMemory(from: $0) } }
      // As in mg, a created item's key is not marked binary.
      core.replace(0, with: fresh)
      return (.done, body(MetaItem(core: core, item: fresh), true))
    }
  }

  /// me: calls `body` with the live item (or nil), changing nothing.
  public func metaDebug<R>(_ key: UnsafeRawBufferPointer, _ body: (MetaItem?) -> R) -> R {
    guard !key.isEmpty && key.count <= CacheLimits.maxKeyLength else { return body(nil) }
    return locked { core in
      let item = core.find(key, hash: keyHash(key))
      return body(item == 0 ? nil : MetaItem(core: core, item: item))
    }
  }
}
