// The KHO core assembled: boot (cold or from a handover), the outgoing and
// incoming halves, and the load step that leaves the handover in scratch.

import FDT
import KHOSystem
import Logging

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// What a first start needs; a KHO boot takes sizes from the handover.
public struct KHOOptions: Sendable {
  /// The arena's size at a cold start (sparse: untouched pages cost nothing).
  public var arenaSize: UInt64
  /// `kho_scratch`: the scratch size at a cold start; 0 (the default, as in
  /// the seed) leaves KHO unable to activate (ENOMEM).
  public var scratchSize: UInt64
  /// 4 KiB or 2 MiB pages.
  public var pageSize: ArenaPageSize
  /// The initial `dt_max`.
  public var dtMax: UInt64
  /// The memfd's name, shown in `/proc/PID/fd`.
  public var arenaName: String

  /// Options for an arena of `arenaSize` bytes with `scratchSize` bytes of scratch.
  public init(
    arenaSize: UInt64, scratchSize: UInt64 = 0, pageSize: ArenaPageSize = .small,
    dtMax: UInt64 = KHOOutgoing.defaultDTMax, arenaName: String = "kho-arena"
  ) {
    self.arenaSize = arenaSize
    self.scratchSize = scratchSize
    self.pageSize = pageSize
    self.dtMax = dtMax
    self.arenaName = arenaName
  }
}

/// Why a cold start failed (a bad handover never fails a boot: it starts
/// cold instead).
public enum KHOBootError: Error, Sendable, Equatable, CustomStringConvertible {
  case arena(ArenaError)
  case scratch(AllocatorError)

  public var description: String {
    switch self {
    case .arena(let e): return "cannot create the arena: \(e)"
    case .scratch(let e): return "cannot reserve scratch: \(e)"
    }
  }
}

/// Why ``KHO/load()`` could not leave a handover in scratch.
public enum KHOLoadError: Error, Sendable, CustomStringConvertible {
  /// KHO is not active: there is no blob to hand over.
  case notActive
  /// A `mem` range is bad (outside the arena, in scratch).
  case memCache(MemCacheError)
  /// Scratch is too small for record, mem cache and blob.
  case handover(HandoverError)

  /// The errno an operator sees, as kexec_file_load would report it.
  public var errno: Errno {
    switch self {
    case .notActive, .memCache: return .invalidArgument
    case .handover: return .noMemory
    }
  }

  public var description: String {
    switch self {
    case .notActive: return "KHO is not active: serialize first (echo 1 > kernel/kho/active)"
    case .memCache(let e): return "\(e)"
    case .handover(let e): return "\(e)"
    }
  }
}

/// Kexec HandOver for one process: the arena that survives exec, its
/// allocator and scratch, the outgoing side that serializes subsystems, and
/// after a KHO boot the incoming side that hands their memory back.
///
/// ```swift
/// let kho = try KHO.boot(KHOOptions(arenaSize: 1 << 30, scratchSize: 64 << 20))
/// if let incoming = kho.incoming { /* claim preserved ranges */ }
/// kho.finishBoot()
/// try kho.outgoing.register(myNotifier)
/// // later: serialize, load, exec the next image with the arena fd
/// try kho.outgoing.serialize()
/// let location = try kho.load()  // KHO_HANDOVER=<location> for the next image
/// ```
public final class KHO: Sendable {
  /// The memory that survives exec.
  public let arena: Arena
  /// Pages of the arena.
  public let allocator: PageAllocator
  /// `kho_scratch_phys` ..< + `kho_scratch_len`; empty when there is none.
  public let scratch: Range<UInt64>
  /// The notifier chain, serialize and abort.
  public let outgoing: KHOOutgoing
  /// The control files (`/sys/kernel/kho`, `/sys/firmware/kho`).
  public let attributes: KHOAttributes
  /// What the previous image handed over; `nil` after a cold start.
  public let incoming: KHOIncoming?
  /// Why a handover that was offered was refused, if one was.
  public let coldStartReason: HandoverError?
  /// The stateless side: preserve pages and name sub-blobs at any time, in
  /// a description that survives even a crash. nil when the arena has no
  /// room for its root (an arena made by a build without it).
  public let preservation: KHOPreservation?

  /// `is_kho_boot`.
  public var isKHOBoot: Bool { incoming != nil }
  /// 0 after a cold start, n after the n-th handover in a row.
  public var generation: UInt64 { incoming?.generation ?? 0 }

  private init(
    arena: Arena, allocator: PageAllocator, scratch: Range<UInt64>, dtMax: UInt64,
    incoming: KHOIncoming?, coldStartReason: HandoverError?, preservation: KHOPreservation?,
    logger: Logger
  ) {
    self.preservation = preservation
    self.arena = arena
    self.allocator = allocator
    self.scratch = scratch
    self.outgoing = KHOOutgoing(scratch: scratch, dtMax: dtMax, logger: logger)
    self.attributes = KHOAttributes(outgoing: outgoing)
    self.incoming = incoming
    self.coldStartReason = coldStartReason
    if let incoming {
      let blob = incoming.tree.bytes
      attributes.setIncomingBlob { blob }
    }
  }

  /// Boots: from the handover at `handover` if there is one and it is
  /// valid; else, after a crash, from the arena `crashed` (a memfd a keeper
  /// held while the previous image was dead) if its preservation root is
  /// valid; else cold, with a fresh arena. A bad handover or root is logged
  /// with what is wrong and never fails the boot.
  ///
  /// The core knows no process, as the kernel's `kho_populate()` is handed
  /// its location by early boot code: the caller (the runtime) reads the
  /// ``HandoverRecord/environmentName`` variable, parses it with
  /// ``HandoverLocation/init(parsing:)``, and passes the location, or the
  /// parse error to start cold with.
  ///
  /// - Parameters:
  ///   - options: the arena and scratch to make on a cold start.
  ///   - handover: where the previous image left its handover, or why that
  ///     could not be told; nil for a first boot.
  ///   - crashed: the arena kept across a crash.
  ///   - logger: where what is refused, and why, is said.
  public static func boot(
    _ options: KHOOptions,
    handover: Result<HandoverLocation, HandoverError>? = nil,
    crashed: FileDescriptor? = nil,
    logger: Logger = Logger(label: "kho")
  ) throws(KHOBootError) -> KHO {
    var reason: HandoverError?
    if let handover {
      do throws(HandoverError) {
        return try ingest(try handover.get(), options, logger)
      } catch {
        logger.error("kho: starting cold: \(error)")
        reason = error
      }
    } else if let crashed {
      do throws(HandoverError) {
        return try recover(crashed, options, logger)
      } catch {
        logger.error("kho: the arena kept across the crash is unusable, starting cold: \(error)")
        reason = error
      }
    }
    return try coldStart(options, reason, logger)
  }

  private static func coldStart(
    _ options: KHOOptions, _ reason: HandoverError?, _ logger: Logger
  ) throws(KHOBootError) -> KHO {
    let arena: Arena
    do {
      // The preservation root comes on top of what the caller sized.
      arena = try Arena(
        size: options.arenaSize + PreservationRoot.size, pageSize: options.pageSize,
        name: options.arenaName, logger: logger)
    } catch { throw .arena(error) }
    let allocator = PageAllocator(arena: arena)
    let root = reserveRoot(arena, allocator, logger)
    let scratch: Range<UInt64>
    do { scratch = try Scratch.reserve(length: options.scratchSize, in: allocator) } catch {
      throw .scratch(error)
    }
    let preservation = root.map {
      KHOPreservation(arena: arena, root: $0, scratch: scratch, sequence: 0, generation: 0)
    }
    return KHO(
      arena: arena, allocator: allocator, scratch: scratch, dtMax: options.dtMax, incoming: nil,
      coldStartReason: reason, preservation: preservation, logger: logger)
  }

  /// Takes the preservation root's pages out of the allocator; nil (logged)
  /// when they are not free, as in an arena made by a build without a root.
  private static func reserveRoot(_ arena: Arena, _ allocator: PageAllocator, _ logger: Logger)
    -> Range<UInt64>?
  {
    guard let root = PreservationRoot.range(arenaSize: arena.size) else { return nil }
    do {
      try allocator.reserve(root)
      return root
    } catch {
      logger.notice("kho: no preservation root in this arena (\(error)); a crash will lose it")
      return nil
    }
  }

  /// The sequence of the newest valid description in `arena`, 0 if none.
  private static func currentSequence(_ arena: Arena) -> UInt64 {
    let bytes = UnsafeRawBufferPointer(start: arena.base, count: Int(arena.size))
    return (try? PreservationRoot.read(bytes, pageSize: arena.pageSize.bytes))?.sequence ?? 0
  }

  /// Adopts the arena a keeper held across a crash: the newest valid
  /// description of its preservation root becomes the incoming state (its
  /// preserved ranges the mem cache, its kho-v4 tree the blob), with a
  /// fresh scratch; nothing else in the arena is trusted.
  private static func recover(_ fd: FileDescriptor, _ options: KHOOptions, _ logger: Logger)
    throws(HandoverError) -> KHO
  {
    let status: FileStatus
    do { status = try fd.status() } catch { throw .badArenaFD("fd \(fd.rawValue): \(error)") }
    let size = UInt64(max(status.size, 0))
    guard let pageBytes = PreservationRoot.peekPageSize(fd, arenaSize: size),
      let pageSize = ArenaPageSize(rawValue: pageBytes)
    else { throw .badRecord("no preservation root in the \(size)-byte arena fd \(fd.rawValue)") }
    let arena: Arena
    do { arena = try Arena(adopting: fd, size: size, pageSize: pageSize, logger: logger) } catch {
      throw .badArenaFD("\(error)")
    }
    let description = try PreservationRoot.read(
      UnsafeRawBufferPointer(start: arena.base, count: Int(arena.size)), pageSize: pageBytes)
    let root = PreservationRoot.range(arenaSize: size)!
    let allocator = PageAllocator(arena: arena)
    for range in description.ranges {
      do { try allocator.reserve(range.address..<range.end) } catch {
        throw .badMemCache(MemCacheError(kind: .malformed, range: range, node: nil))
      }
    }
    do { try allocator.reserve(root) } catch {
      throw .badRecord("the preservation root overlaps preserved memory")
    }
    let scratch: Range<UInt64>
    do { scratch = try Scratch.reserve(length: options.scratchSize, in: allocator) } catch {
      throw .badRecord("no room for scratch beside the preserved memory: \(error)")
    }
    let memCache: MemCache
    do {
      memCache = try MemCache(
        validating: description.ranges, pageSize: pageBytes, arenaSize: size, scratch: scratch)
    } catch { throw .badMemCache(error) }
    let record = HandoverRecord(
      arenaSize: size, pageSize: pageBytes, generation: description.generation, scratch: scratch,
      blob: 0..<0, memCacheAddress: 0, memCacheCount: UInt64(memCache.ranges.count))
    let incoming = KHOIncoming(
      HandoverImage.Incoming(record: record, memCache: memCache, tree: description.tree),
      kind: .crash, arena: arena, allocator: allocator, logger: logger)
    logger.notice(
      "kho: crash boot: the previous image (generation \(description.generation)) died; its preservation root (sequence \(description.sequence)) holds \(memCache.ranges.count) preserved range(s), \(memCache.totalBytes) bytes, sub-blobs \(description.tree.root.children.map(\.name))"
    )
    let preservation = KHOPreservation(
      arena: arena, root: root, scratch: scratch, sequence: description.sequence,
      generation: description.generation)
    return KHO(
      arena: arena, allocator: allocator, scratch: scratch, dtMax: options.dtMax,
      incoming: incoming, coldStartReason: nil, preservation: preservation, logger: logger)
  }

  /// Adopts and validates everything the previous image left, trusting
  /// nothing until it is checked.
  private static func ingest(
    _ location: HandoverLocation, _ options: KHOOptions, _ logger: Logger
  )
    throws(HandoverError) -> KHO
  {
    let pageSize = try peekPageSize(location)
    let arena: Arena
    do {
      arena = try Arena(
        adopting: FileDescriptor(rawValue: location.fd), size: location.arenaSize,
        pageSize: pageSize, logger: logger)
    } catch {
      if case .sizeMismatch = error { FileDescriptor(rawValue: location.fd).closeIgnoringErrors() }
      throw .badArenaFD("\(error)")
    }
    let image = try HandoverImage.read(
      recordAddress: location.recordAddress,
      arena: UnsafeRawBufferPointer(start: arena.base, count: Int(arena.size)),
      pageSize: pageSize.bytes)
    let allocator = PageAllocator(arena: arena)
    // Nothing may be placed on preserved memory before it is reserved:
    // allocate from scratch only until then, as memblock does after kexec.
    allocator.allocationWindow = image.record.scratch
    for range in image.memCache.ranges {
      do { try allocator.reserve(range.address..<range.end) } catch {
        throw .badMemCache(MemCacheError(kind: .malformed, range: range, node: nil))
      }
    }
    allocator.allocationWindow = nil
    do { try allocator.reserve(image.record.scratch) } catch {
      throw .badRecord("scratch \(image.record.scratch) cannot be reserved: \(error)")
    }
    if options.arenaSize != location.arenaSize {
      logger.notice(
        "kho: keeping the handed-over arena of \(location.arenaSize) bytes (options ask for \(options.arenaSize))"
      )
    }
    let root = reserveRoot(arena, allocator, logger)
    let preservation = root.map {
      KHOPreservation(
        arena: arena, root: $0, scratch: image.record.scratch, sequence: currentSequence(arena),
        generation: image.record.generation)
    }
    let incoming = KHOIncoming(
      image, kind: .handover, arena: arena, allocator: allocator, logger: logger)
    logger.info(
      "kho: KHO boot, generation \(image.record.generation), \(image.memCache.ranges.count) preserved range(s), \(image.memCache.totalBytes) bytes"
    )
    return KHO(
      arena: arena, allocator: allocator, scratch: image.record.scratch, dtMax: options.dtMax,
      incoming: incoming, coldStartReason: nil, preservation: preservation, logger: logger)
  }

  /// Reads the record's page size with `pread`, before mapping: adopting
  /// the arena needs it.
  private static func peekPageSize(_ location: HandoverLocation) throws(HandoverError)
    -> ArenaPageSize
  {
    // The fd first: a record read from something that is not the arena
    // would only give a confusing error. Only a memfd carries seals.
    let fd = FileDescriptor(rawValue: location.fd)
    do { _ = try fd.seals() } catch {
      throw .badArenaFD(
        error.errno == .badDescriptor
          ? "fd \(location.fd) is not open" : "fd \(location.fd) is not a memfd: \(error)")
    }
    guard location.recordAddress <= UInt64(Int64.max - Int64(HandoverRecord.size)) else {
      throw .badRecord(
        "record address 0x\(String(location.recordAddress, radix: 16)) is outside the arena")
    }
    let bytes: [UInt8]
    do { bytes = try fd.read(upTo: HandoverRecord.size, at: Int64(location.recordAddress)) } catch {
      throw .badArenaFD("fd \(location.fd): \(error)")
    }
    guard bytes.count == HandoverRecord.size else {
      throw .badRecord(
        "record at 0x\(String(location.recordAddress, radix: 16)) is past the end of the arena")
    }
    let decoded: Result<HandoverRecord, HandoverError> = bytes.withUnsafeBytes { raw in
      Result { () throws(HandoverError) in try HandoverRecord.decode(raw) }
    }
    let record = try decoded.get()
    guard let size = ArenaPageSize(rawValue: record.pageSize) else {
      throw .badRecord(
        "page size 0x\(String(record.pageSize, radix: 16)) is neither 4 KiB nor 2 MiB")
    }
    return size
  }

  /// Ends start-up: preserved memory that no subsystem claimed returns to
  /// the allocator. Call once every subsystem has claimed what it keeps.
  @discardableResult
  public func finishBoot() -> [Range<UInt64>] {
    incoming?.finishBoot() ?? []
  }

  /// Leaves the handover in scratch, as kexec_file_load places the image's
  /// segments: the mem cache built from the blob's `mem` properties, the
  /// blob and the record. KHO must be active (serialized).
  ///
  /// - Returns: where the next image finds it; pass it as the
  ///   ``HandoverRecord/environmentName`` variable with the arena fd open.
  public func load() throws(KHOLoadError) -> HandoverLocation {
    guard let tree = outgoing.dt else { throw .notActive }
    let cache: MemCache
    do {
      cache = try MemCache(
        tree: tree, pageSize: arena.pageSize.bytes, arenaSize: arena.size, scratch: scratch)
    } catch { throw .memCache(error) }
    do {
      _ = try HandoverImage.write(
        blob: tree.bytes, memCache: cache, generation: generation + 1,
        into: UnsafeMutableRawBufferPointer(start: arena.base, count: Int(arena.size)),
        pageSize: arena.pageSize.bytes, scratch: scratch)
    } catch { throw .handover(error) }
    return HandoverLocation(
      fd: arena.fd.rawValue, arenaSize: arena.size, recordAddress: scratch.lowerBound)
  }
}
