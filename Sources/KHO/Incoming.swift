// The incoming half: what a KHO boot found, and the subsystems' way to take
// their memory back (the series' kho_get_fdt, kho_claim_mem,
// kho_return_mem).

import FDT
import KHOSystem
import Logging
import Synchronization

/// Why a claim or return was refused.
public enum ClaimError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The range is not inside one range of the mem cache.
  case notPreserved(KHOMemoryRange)
  /// The range, or part of it, was claimed already.
  case alreadyClaimed(KHOMemoryRange)
  /// The range was never claimed, so it cannot be returned.
  case notClaimed(KHOMemoryRange)
  /// Start-up is over: what was not claimed went back to the allocator.
  case bootFinished

  public var description: String {
    switch self {
    case .notPreserved(let r): return "\(r) is not preserved memory"
    case .alreadyClaimed(let r): return "\(r) is already claimed"
    case .notClaimed(let r): return "\(r) was not claimed"
    case .bootFinished: return "start-up is finished; unclaimed memory was returned"
    }
  }
}

/// The state the previous image handed over, validated.
///
/// ```swift
/// if let incoming = kho.incoming,
///    let node = incoming.findNode(compatible: "example-cache-v1"),
///    let mem = node.property("mem")?.native(UInt64.self) {
///   let memory = try incoming.claim(KHOMemoryRange(address: mem[0], length: mem[1]))
///   // ... use memory ...
/// }
/// kho.finishBoot()  // returns whatever nobody claimed
/// ```
public final class KHOIncoming: Sendable {
  /// How the previous image left.
  public enum Kind: String, Sendable {
    /// It handed over: the blob is its kho-v1 tree, the mem cache what
    /// its notifiers described.
    case handover
    /// It died; a keeper held the arena. The blob is the kho-v4 root of
    /// its stateless description, the mem cache what it had preserved.
    case crash
  }

  /// How the previous image left.
  public let kind: Kind
  /// The handover record the previous image wrote (after a crash, one made
  /// from the preservation root, with this image's scratch).
  public let record: HandoverRecord
  /// The preserved ranges, reserved in the allocator at boot.
  public let memCache: MemCache
  /// The incoming blob (`/sys/firmware/kho/dt`).
  public let tree: FlattenedDeviceTree

  private let arena: Arena
  private let allocator: PageAllocator
  private let logger: Logger
  private struct State {
    /// Claimed page ranges, sorted and disjoint.
    var claimed: [Range<UInt64>] = []
    var finished = false
  }
  private let state = Mutex(State())

  init(
    _ image: HandoverImage.Incoming, kind: Kind, arena: Arena, allocator: PageAllocator,
    logger: Logger
  ) {
    self.kind = kind
    self.record = image.record
    self.memCache = image.memCache
    self.tree = image.tree
    self.arena = arena
    self.allocator = allocator
    self.logger = logger
  }

  /// The generation of this image: 1 after the first handover.
  public var generation: UInt64 { record.generation }

  /// The node at `path` of the incoming blob (`kho_get_fdt` then a lookup).
  public func findNode(path: String) -> FDTNode? {
    tree.node(atPath: path)
  }

  /// The first node whose `compatible` list holds `compatible`, searching
  /// the root's subnodes depth first.
  public func findNode(compatible: String) -> FDTNode? {
    findNode { $0.property("compatible")?.strings?.contains(compatible) == true }
  }

  /// The first node that `matches`, searching the root's subnodes depth
  /// first.
  public func findNode(where matches: (FDTNode) -> Bool) -> FDTNode? {
    var pending = tree.root.children.reversed() as [FDTNode]
    while let node = pending.popLast() {
      if matches(node) { return node }
      pending.append(contentsOf: node.children.reversed())
    }
    return nil
  }

  /// The sub-blob the previous image named `name` with
  /// ``KHOPreservation/addSubtree(_:at:)`` (`kho_retrieve_subtree`): its
  /// place in the arena, checked to lie in preserved memory; nil if there
  /// is none (always after a handover, whose blob has no sub-blobs).
  public func retrieveSubtree(_ name: String) -> KHOMemoryRange? {
    guard kind == .crash, let node = tree.root.child(named: name),
      let data = node.property("preserved-data")?.native(UInt64.self), data.count == 1,
      let size = node.property("blob-size")?.native(UInt64.self), size.count == 1
    else { return nil }
    return KHOMemoryRange(address: data[0], length: size[0])
  }

  /// Takes `range` of preserved memory for the caller (`kho_claim_mem`).
  /// Each page can be claimed once; the pages stay reserved until
  /// ``returnMemory(_:)``.
  ///
  /// - Returns: the bytes of `range` in the arena.
  public func claim(_ range: KHOMemoryRange) throws(ClaimError) -> UnsafeMutableRawBufferPointer {
    let pages = try preservedPages(of: range)
    try state.withLock { state throws(ClaimError) in
      if state.finished { throw .bootFinished }
      let i = state.claimed.partitionIndex { $0.upperBound > pages.lowerBound }
      if i < state.claimed.count, state.claimed[i].lowerBound < pages.upperBound {
        throw .alreadyClaimed(range)
      }
      state.claimed.insert(pages, at: i)
    }
    return UnsafeMutableRawBufferPointer(
      start: arena.base + Int(range.address), count: Int(range.length))
  }

  /// Gives claimed memory back to the allocator (`kho_return_mem`): the
  /// pages of `range` become free.
  public func returnMemory(_ range: KHOMemoryRange) throws(ClaimError) {
    let pages = try preservedPages(of: range)
    try state.withLock { state throws(ClaimError) in
      guard
        let i = state.claimed.firstIndex(where: {
          $0.lowerBound <= pages.lowerBound && pages.upperBound <= $0.upperBound
        })
      else { throw .notClaimed(range) }
      let claim = state.claimed[i]
      var rest: [Range<UInt64>] = []
      if claim.lowerBound < pages.lowerBound { rest.append(claim.lowerBound..<pages.lowerBound) }
      if pages.upperBound < claim.upperBound { rest.append(pages.upperBound..<claim.upperBound) }
      state.claimed.replaceSubrange(i...i, with: rest)
    }
    do { try allocator.free(pages) } catch {
      logger.error("kho: returning \(range) failed: \(error)")
    }
  }

  /// Ends start-up: every preserved page nobody claimed goes back to the
  /// allocator, and is logged. Claims are refused afterwards.
  ///
  /// - Returns: the ranges returned.
  @discardableResult
  func finishBoot() -> [Range<UInt64>] {
    let claimed: [Range<UInt64>]? = state.withLock { state in
      if state.finished { return nil }
      state.finished = true
      return state.claimed
    }
    guard let claimed else { return [] }
    var unclaimed: [Range<UInt64>] = []
    for preserved in memCache.ranges {
      var cursor = preserved.address
      let end = preserved.end
      for c in claimed where c.upperBound > cursor && c.lowerBound < end {
        if c.lowerBound > cursor { unclaimed.append(cursor..<c.lowerBound) }
        cursor = max(cursor, c.upperBound)
      }
      if cursor < end { unclaimed.append(cursor..<end) }
    }
    for r in unclaimed {
      do { try allocator.free(r) } catch {
        logger.error("kho: returning unclaimed \(r) failed: \(error)")
      }
    }
    if !unclaimed.isEmpty {
      let bytes = unclaimed.reduce(0) { $0 + ($1.upperBound - $1.lowerBound) }
      logger.notice(
        "kho: returned \(unclaimed.count) unclaimed preserved range(s), \(bytes) bytes: \(unclaimed.map { KHOMemoryRange(address: $0.lowerBound, length: $0.upperBound - $0.lowerBound) })"
      )
    }
    return unclaimed
  }

  /// The pages of `range`, if they lie inside one preserved range.
  private func preservedPages(of range: KHOMemoryRange) throws(ClaimError) -> Range<UInt64> {
    let page = record.pageSize
    let (end, overflow) = range.address.addingReportingOverflow(range.length)
    guard !overflow, range.length > 0, end <= record.arenaSize else { throw .notPreserved(range) }
    let start = range.address & ~(page - 1)
    let alignedEnd = (end + page - 1) & ~(page - 1)
    guard memCache.ranges.contains(where: { $0.address <= start && alignedEnd <= $0.end }) else {
      throw .notPreserved(range)
    }
    return start..<alignedEnd
  }
}
