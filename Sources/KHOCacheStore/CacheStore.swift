#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A memcached-like cache whose whole state (hash index, items, LRUs, slab
/// allocator, CAS counter, cache clock, counters) lives inside one
/// caller-given memory region, addressed by offsets from its base.
///
/// Cold start: `format(region:itemSizeMax:)`. After a handover, the next
/// process maps the same memory (at any address) and calls
/// `attach(region:)`, which checks the header in O(1) of the item count and
/// uses everything as it is.
///
/// ```swift
/// let store = try CacheStore.format(region: region)
/// _ = try store.set("k", value: Array("v".utf8))
/// store.freeze()                 // the KHO DUMP notifier
/// // ... exec; in the next image:
/// let again = try CacheStore.attach(region: sameMemoryMappedElsewhere)
/// ```
///
/// Thread safety: every operation takes one short lock (a pthread mutex);
/// the operations do no I/O and allocate nothing on the Swift heap except
/// incr/decr's few digits.
///
/// Freeze: `freeze()` waits for the operation in progress, records the cache
/// clock and marks the header frozen. From then on, mutating operations
/// (set and every storage command, delete, incr/decr, touch, gat/gats,
/// flush_all) throw `CacheOperationError.frozen` without touching the
/// region, and reads (get/gets, stats) still answer but write nothing (no
/// LRU move, no counter, no lazy unlink of expired items). The protocol
/// layer turns `.frozen` into a wait (see `KHOCacheServer`). `unfreeze()`
/// (KHO ABORT) undoes it; the next image's `attach` finds the header frozen,
/// which proves no mutation was cut in the middle, and marks it live.
public final class CacheStore: @unchecked Sendable {
  /// The version written in the header; `attach` refuses any other.
  public static let formatVersion: UInt32 = 3
  /// The KHO node's compatible string for this format.
  public static let compatible = "kho-cache-v1"
  /// memcached's default item size limit (`-I 1m`).
  public static let defaultItemSizeMax = 1 << 20

  /// The region the store lives in.
  public let region: CacheRegion
  // `core` is only touched with `lock` held: that is what makes the
  // @unchecked Sendable above true.
  private let core: StoreCore
  private let lock: StoreLock

  private init(region: CacheRegion, core: StoreCore) {
    self.region = region
    self.core = core
    self.lock = StoreLock()
  }

  // MARK: Creating and attaching

  /// The region size to ask for so that about `memoryLimit` bytes hold
  /// items (memcached's `-m`), plus the header and the hash index.
  public static func regionSize(memoryLimit: Int, itemSizeMax: Int = defaultItemSizeMax) -> Int {
    let pageSize = Geometry.pageSize(itemSizeMax: itemSizeMax)
    let pages = max(1, (memoryLimit + pageSize - 1) / pageSize)
    let index = alignUp(Header.size + Geometry.bucketCount(forItemBytes: memoryLimit) * 8, 4096)
    return alignUp(index + pages, 4096) + pages * pageSize
  }

  /// Cold start: lays out an empty store over the whole region, overwriting
  /// whatever it held. O(region's index size), done once.
  ///
  /// - Parameters:
  ///   - region: the memory, mapped shared and read-write.
  ///   - itemSizeMax: the largest item (header + key + value), memcached's `-I`.
  ///   - sizeClasses: memcached's `-n` and `-f`, kept in the header: every
  ///     later `attach` uses these, whatever its own image was asked for.
  ///   - clock: where time comes from; `.system` outside tests.
  ///   - damageHandler: told about damage found in the region (see `attach`).
  /// - Throws: `CacheRegionError` when the region or the limits are unusable.
  public static func format(
    region: CacheRegion, itemSizeMax: Int = defaultItemSizeMax,
    sizeClasses: SizeClasses = .init(), clock: CacheClockSource = .system,
    damageHandler: (@Sendable (String) -> Void)? = nil
  ) throws(CacheRegionError) -> CacheStore {
    guard (1024...(1 << 30)).contains(itemSizeMax) else { throw .invalidItemSizeMax(itemSizeMax) }
    guard sizeClasses.isValid(itemSizeMax: itemSizeMax) else {
      throw .invalidSizeClasses(sizeClasses)
    }
    guard Int(bitPattern: region.base) & 7 == 0 else { throw .misalignedBase }
    guard
      let geometry = Geometry.plan(
        regionSize: region.size, itemSizeMax: itemSizeMax, classes: sizeClasses)
    else {
      throw .regionTooSmall(size: region.size)
    }
    let memory = RegionMemory(base: region.base, size: region.size)
    memory.mutableBytes(0, geometry.slabOffset).initializeMemory(as: UInt8.self, repeating: 0)
    geometry.write(to: memory)
    memory.setU32(Header.state, Header.stateLive)
    memory.setU64(Header.clock, CacheLimits.clockStart)
    memory.setU64(
      Header.clockEpochWallSeconds,
      UInt64(bitPattern: clock.wallSeconds() &- Int64(CacheLimits.clockStart)))
    let core = StoreCore(
      memory: memory, geometry: geometry,
      clock: CacheClock(source: clock, resumingAt: CacheLimits.clockStart),
      damageHandler: damageHandler)
    return CacheStore(region: region, core: core)
  }

  /// After a handover: checks the header (magic, version, size, geometry
  /// checksum and layout, the page table, allocator and LRU anchors, the
  /// clock and CAS counter, the frozen mark) and uses the store as it is.
  /// No per-item work: O(size classes + slab pages).
  ///
  /// The region is never trusted beyond that: every offset and length read
  /// from it later is checked before use, and every walk is bounded. An
  /// item, chain or list that fails a check disappears (it is cut off, or
  /// its class's lists are rebuilt from the class's pages), is counted in
  /// the `damaged` stat, and is reported to `damageHandler`. No damage can
  /// crash the store, hang it, or make it return bytes that were not stored
  /// under the key asked for (every item's checksum is checked before its
  /// bytes are served).
  ///
  /// A store found unfrozen while `requireFrozen` is false is taken to be
  /// left by a crash: its allocator, LRUs and counters are rebuilt from the
  /// page table and the chunks first (O(chunks), see `recoverAfterCrash`).
  ///
  /// - Parameters:
  ///   - region: the same bytes `format` was given, mapped anywhere.
  ///   - clock: where time comes from; the cache clock resumes from the
  ///     value the previous owner recorded.
  ///   - requireFrozen: refuse a store its previous owner did not freeze
  ///     (true by default, after a handover); false after a crash.
  ///   - damageHandler: told, with the store lock held, what damage was
  ///     found and cut away (a sentence for a log; it must not call back
  ///     into the store). nil: only counted.
  /// - Throws: `CacheRegionError` naming the first problem found.
  public static func attach(
    region: CacheRegion, clock: CacheClockSource = .system, requireFrozen: Bool = true,
    damageHandler: (@Sendable (String) -> Void)? = nil
  ) throws(CacheRegionError) -> CacheStore {
    guard Int(bitPattern: region.base) & 7 == 0 else { throw .misalignedBase }
    let memory = RegionMemory(base: region.base, size: region.size)
    let geometry = try Geometry.read(from: memory)
    // Resume the clock where the previous image froze it, to the
    // nanosecond when it recorded that (else from whole seconds); the
    // checks below refuse a clock that is not plausible.
    let seconds = memory.u64(Header.clock)
    let nanoseconds = memory.u64(Header.clockNanoseconds)
    let resume = nanoseconds / 1_000_000_000 >= seconds ? nanoseconds : seconds &* 1_000_000_000
    let core = StoreCore(
      memory: memory, geometry: geometry,
      clock: CacheClock(source: clock, resumingAtNanoseconds: resume),
      damageHandler: damageHandler)
    if !requireFrozen && memory.u32(Header.state) == Header.stateLive {
      // Nobody froze it: rebuild what a mutation cut short may have left
      // half done, before the checks that expect it whole.
      core.recoverAfterCrash()
    }
    try checkDynamicState(
      memory, geometry, requireFrozen: requireFrozen, wallSeconds: clock.wallSeconds())
    memory.setU32(Header.state, Header.stateLive)
    memory.setU64(Header.clockNanoseconds, 0)
    return CacheStore(region: region, core: core)
  }

  // MARK: Crash tests

  /// The points in the middle of a mutation where ``setCrashHook(_:)``'s
  /// hook is called.
  public enum CrashPoint {
    /// A storage command, between unlinking the old item and linking the new.
    public static let midSet = "mid-set"
    /// An eviction, with the item out of its hash chain but not its LRU.
    public static let midEviction = "mid-eviction"
    /// Every point.
    public static let all = [midSet, midEviction]
  }

  /// For crash tests only: `hook` is called, with the store lock held, at
  /// each ``CrashPoint`` a mutation reaches; a test's hook kills the
  /// process there (`KHO_CRASH_AT` in KHORuntime's `FaultInjection`).
  public func setCrashHook(_ hook: (@Sendable (String) -> Void)?) {
    locked { $0.crashHook = hook }
  }

  // MARK: KHO integration

  /// The format version, for the KHO node.
  public var formatVersion: UInt32 { Self.formatVersion }

  /// The memory to preserve: the whole region, as one range relative to
  /// its base.
  public var memoryRanges: [CacheMemoryRange] { [CacheMemoryRange(offset: 0, length: region.size)] }

  /// The largest item accepted (header + key + value).
  public var itemSizeMax: Int { core.geometry.itemSizeMax }

  /// The `-n` and `-f` the store was formatted with (an attached store's
  /// own, not the current image's options).
  public var sizeClasses: SizeClasses {
    SizeClasses(chunkSpace: core.geometry.chunkSpace, growthFactor: core.geometry.growthFactor)
  }

  /// Bytes of slab pages, memcached's `limit_maxbytes`.
  public var limitMaxBytes: Int { core.geometry.pageCount * core.geometry.pageSize }

  /// Whether `freeze()` is in force.
  public var isFrozen: Bool { locked { $0.frozen } }

  /// Stops every mutation for a handover (the KHO DUMP step): waits for the
  /// operation in progress, records the cache clock, marks the header
  /// frozen. Idempotent.
  public func freeze() {
    locked { core in
      core.memory.setU64(Header.clock, max(core.memory.u64(Header.clock), UInt64(core.now)))
      core.memory.setU64(Header.clockNanoseconds, core.clock.nowNanoseconds())
      core.memory.setU32(Header.state, Header.stateFrozen)
      core.frozen = true
    }
  }

  /// Lifts `freeze()` (the KHO ABORT step). Idempotent.
  public func unfreeze() {
    locked { core in
      core.frozen = false
      core.memory.setU32(Header.state, Header.stateLive)
    }
  }

  // MARK: Locking

  @inline(__always) func locked<R, E: Error>(_ body: (StoreCore) throws(E) -> R) throws(E) -> R {
    lock.lock()
    defer { lock.unlock() }
    core.tick()
    return try body(core)
  }

  @inline(__always) func mutating<R>(
    _ key: UnsafeRawBufferPointer?, _ body: (StoreCore) throws(CacheOperationError) -> R
  ) throws(CacheOperationError) -> R {
    if let key, key.isEmpty || key.count > CacheLimits.maxKeyLength { throw .badKey }
    return try locked { core throws(CacheOperationError) in
      guard !core.frozen else { throw .frozen }
      return try body(core)
    }
  }
}

/// A pthread mutex on the heap (a stable address, as pthread requires).
final class StoreLock: @unchecked Sendable {
  private let mutex: UnsafeMutablePointer<pthread_mutex_t>

  init() {
    mutex = .allocate(capacity: 1)
    mutex.initialize(to: pthread_mutex_t())
    pthread_mutex_init(mutex, nil)
  }

  deinit {
    pthread_mutex_destroy(mutex)
    mutex.deallocate()
  }

  @inline(__always) func lock() { pthread_mutex_lock(mutex) }
  @inline(__always) func unlock() { pthread_mutex_unlock(mutex) }
}
