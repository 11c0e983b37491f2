import KHOCacheStore
import Testing

/// The store side of the meta commands (Meta.swift): the CAS rules of
/// `ms`, `md I`, `ma`, and the item bits, also through a handover.
@Suite struct MetaTests {
  let memory = SharedMemory(size: 4 << 20)
  let clock = ManualClock()

  func makeStore() throws -> CacheStore {
    try CacheStore.format(region: memory.map(), itemSizeMax: 64 << 10, clock: clock.source)
  }

  /// What mg would show of `key`, changing nothing (`u`).
  struct Shown: Equatable {
    var value: [UInt8]
    var cas: UInt64
    var ttl: Int64
    var fetched, stale, tokenSent, binaryKey: Bool
  }

  func show(_ store: CacheStore, _ key: String) throws -> Shown? {
    try Array(key.utf8).withUnsafeBytes { key in
      try store.metaGet(key, vivify: false, mutates: false, touches: false, noUpdate: true) {
        item, _ in
        item.map {
          Shown(
            value: Array($0.value), cas: $0.cas, ttl: $0.remainingSeconds, fetched: $0.fetched,
            stale: $0.stale, tokenSent: $0.tokenSent, binaryKey: $0.binaryKey)
        }
      }
    }
  }

  func metaSet(
    _ store: CacheStore, _ key: String, _ value: String, mode: StoreMode = .set,
    exptime: Int64 = 0, options: MetaStoreOptions = MetaStoreOptions()
  ) throws -> (StoreResult, cas: UInt64) {
    try Array(key.utf8).withUnsafeBytes { key in
      try Array(value.utf8).withUnsafeBytes { value in
        try store.metaStore(
          mode, key: key, value: value, flags: 0, exptime: exptime, options: options)
      }
    }
  }

  func invalidate(_ store: CacheStore, _ key: String) throws -> MetaOutcome {
    try Array(key.utf8).withUnsafeBytes {
      try store.metaDelete($0, compareCas: nil, invalidate: true, exptime: 30)
    }
  }

  /// A fetch that takes the win token when the item is stale, as mg does.
  func fetch(_ store: CacheStore, _ key: String) throws {
    try Array(key.utf8).withUnsafeBytes { key in
      try store.metaGet(key, vivify: false, mutates: false, touches: false, noUpdate: false) {
        item, _ in
        if let item, item.stale && !item.tokenSent { item.markTokenSent() }
      }
    }
  }

  @Test func compareAndSwapModes() throws {
    let store = try makeStore()
    let (stored, cas) = try metaSet(store, "k", "one")
    #expect(stored == .stored && cas > 0)
    #expect(try metaSet(store, "k", "two", mode: .cas(cas + 5)).0 == .exists)
    #expect(try metaSet(store, "absent", "x", mode: .cas(1)).0 == .notFound)
    // Append with a CAS that differs is refused with EXISTS, as memcached's.
    let append = MetaStoreOptions(compareCas: cas + 5)
    #expect(try metaSet(store, "k", "!", mode: .append, options: append).0 == .exists)
    let (swapped, newCas) = try metaSet(store, "k", "two", mode: .cas(cas))
    #expect(swapped == .stored && newCas > cas)
    #expect(try show(store, "k")?.value == bytes("two"))
    try store.checkConsistency()
  }

  @Test func invalidateThenStaleSetThenWin() throws {
    let store = try makeStore()
    let (_, oldCas) = try metaSet(store, "k", "old", exptime: 100)
    #expect(try invalidate(store, "k") == .done)
    var shown = try #require(try show(store, "k"))
    #expect(shown.stale && !shown.tokenSent && shown.ttl == 30 && shown.cas > oldCas)
    try fetch(store, "k")
    #expect(try show(store, "k")?.tokenSent == true)
    // A set with the older CAS and I stores a value that stays stale,
    // keeps the expiry and the token.
    let stale = MetaStoreOptions(compareCas: oldCas, invalidate: true)
    #expect(try metaSet(store, "k", "new", mode: .cas(oldCas), options: stale).0 == .stored)
    shown = try #require(try show(store, "k"))
    #expect(shown.value == bytes("new") && shown.stale && shown.tokenSent && shown.ttl == 30)
    // The current CAS clears it.
    #expect(try metaSet(store, "k", "fresh", mode: .cas(shown.cas)).0 == .stored)
    shown = try #require(try show(store, "k"))
    #expect(!shown.stale && !shown.tokenSent && shown.ttl == -1)
    try store.checkConsistency()
  }

  @Test func arithmeticWithVivifyAndCas() throws {
    let store = try makeStore()
    let key = Array("n".utf8)
    func add(_ delta: UInt64, cas: UInt64 = 0, vivify: Bool = false) throws -> (
      MetaOutcome, [UInt8]?
    ) {
      try key.withUnsafeBytes {
        try store.metaArithmetic(
          $0, increment: true, delta: delta, compareCas: cas, vivify: vivify, initial: 40
        ) { item, _ in item.map { Array($0.value) } }
      }
    }
    #expect(try add(1).0 == .notFound)
    #expect(try add(1, vivify: true) == (.done, bytes("40")))
    #expect(try add(2) == (.done, bytes("42")))
    #expect(try add(2, cas: 999).0 == .casMismatch)
  }

  @Test func metaBitsSurviveAHandover() throws {
    let store = try makeStore()
    _ = try metaSet(store, "stale", "v", exptime: 100)
    _ = try invalidate(store, "stale")
    try fetch(store, "stale")
    _ = try metaSet(store, "fetched", "v")
    try fetch(store, "fetched")
    _ = try metaSet(store, "binary", "v", options: MetaStoreOptions(binaryKey: true))
    let before = try ["stale", "fetched", "binary"].map { try show(store, $0) }
    store.freeze()
    let next = try CacheStore.attach(region: memory.map(), clock: clock.source)
    let after = try ["stale", "fetched", "binary"].map { try show(next, $0) }
    #expect(before == after)
    #expect(after[0]?.stale == true && after[0]?.tokenSent == true)
    #expect(after[1]?.fetched == true && after[2]?.binaryKey == true)
    try next.checkConsistency()
  }
}
