// The arena's page allocator, in the role of memblock and the buddy
// allocator: contiguous page ranges, reservations of given ranges, and an
// allocation window (the next image allocates from scratch only until it has
// reserved every preserved range, as memblock's scratch-only mode).

import KHOSystem
import Synchronization

/// Why the allocator refused a request.
public enum AllocatorError: Error, Sendable, Equatable, CustomStringConvertible {
  /// No free run of the requested size (inside the window) exists.
  case outOfMemory(bytes: UInt64, largestFreeRun: UInt64)
  /// A zero size, or a range not aligned to the page size.
  case misaligned(Range<UInt64>)
  /// A range that leaves the managed range.
  case outOfRange(Range<UInt64>)
  /// `reserve` of a range not entirely free.
  case notFree(Range<UInt64>)
  /// `free` of a range not entirely allocated (a double free, or memory
  /// never handed out).
  case notAllocated(Range<UInt64>)

  public var description: String {
    switch self {
    case .outOfMemory(let bytes, let largest):
      return
        "no free run of 0x\(String(bytes, radix: 16)) bytes (largest is 0x\(String(largest, radix: 16)))"
    case .misaligned(let r): return "range \(hex(r)) is empty or not page-aligned"
    case .outOfRange(let r): return "range \(hex(r)) leaves the managed memory"
    case .notFree(let r): return "range \(hex(r)) is not entirely free"
    case .notAllocated(let r): return "range \(hex(r)) is not entirely allocated"
    }
  }
}

func hex(_ r: Range<UInt64>) -> String {
  "0x\(String(r.lowerBound, radix: 16))..<0x\(String(r.upperBound, radix: 16))"
}

/// How fragmented the free memory is.
public struct FragmentationReport: Sendable, Equatable, CustomStringConvertible {
  /// The bytes managed.
  public var totalBytes: UInt64
  /// The bytes free.
  public var freeBytes: UInt64
  /// The longest free run, in bytes.
  public var largestFreeRun: UInt64
  /// How many separate free runs there are.
  public var freeRuns: Int

  public var description: String {
    "free 0x\(String(freeBytes, radix: 16)) of 0x\(String(totalBytes, radix: 16)) bytes in \(freeRuns) runs, largest 0x\(String(largestFreeRun, radix: 16))"
  }
}

/// A thread-safe page allocator over a range of addresses (normally a
/// whole ``Arena``).
///
/// Free memory is a sorted list of disjoint, non-adjacent extents: O(n) in
/// the number of extents per call, which stays small because frees merge.
///
/// ```swift
/// let allocator = PageAllocator(arena: arena)
/// let scratch = try allocator.allocate(bytes: 64 << 20)  // reserved for kexec
/// let state = try allocator.allocate(pages: 16)
/// try allocator.free(state)
/// ```
public final class PageAllocator: Sendable {
  /// The page size; every range is a multiple of it.
  public let pageSize: UInt64
  /// The addresses managed.
  public let managed: Range<UInt64>

  private struct State {
    var free: [Range<UInt64>]
    var window: Range<UInt64>?
  }
  private let state: Mutex<State>

  /// Creates an allocator with all of `managed` free.
  ///
  /// - Parameters:
  ///   - pageSize: a power of two.
  ///   - managed: the addresses to manage, page-aligned.
  public init(pageSize: UInt64, managed: Range<UInt64>) {
    precondition(pageSize > 0 && pageSize & (pageSize - 1) == 0, "page size must be a power of two")
    precondition(
      managed.lowerBound % pageSize == 0 && managed.upperBound % pageSize == 0,
      "managed range must be page-aligned")
    self.pageSize = pageSize
    self.managed = managed
    self.state = Mutex(State(free: managed.isEmpty ? [] : [managed], window: nil))
  }

  /// Creates an allocator for all of `arena`, at its page size.
  public convenience init(arena: Arena) {
    self.init(pageSize: arena.pageSize.bytes, managed: 0..<arena.size)
  }

  /// Where allocations may come from, or `nil` for anywhere: while set,
  /// every allocation lies inside it (memblock's scratch-only mode).
  /// ``reserve(_:)`` and ``free(_:)`` ignore it.
  public var allocationWindow: Range<UInt64>? {
    get { state.withLock { $0.window } }
    set { state.withLock { $0.window = newValue } }
  }

  /// Allocates `pages` contiguous pages, the lowest fit.
  ///
  /// - Parameters:
  ///   - pages: how many pages, at least 1.
  ///   - within: limits this allocation to a range (intersected with
  ///     ``allocationWindow``).
  /// - Returns: the allocated range.
  /// - Throws: ``AllocatorError/outOfMemory(bytes:largestFreeRun:)``.
  public func allocate(pages: UInt64, within: Range<UInt64>? = nil) throws(AllocatorError)
    -> Range<UInt64>
  {
    let (bytes, overflow) = pages.multipliedReportingOverflow(by: pageSize)
    guard pages > 0, !overflow else { throw .outOfMemory(bytes: bytes, largestFreeRun: 0) }
    return try allocateAligned(bytes: bytes, within: within)
  }

  /// Allocates at least `bytes` bytes, rounded up to whole pages.
  public func allocate(bytes: UInt64, within: Range<UInt64>? = nil) throws(AllocatorError)
    -> Range<UInt64>
  {
    let pages = bytes / pageSize + (bytes % pageSize == 0 ? 0 : 1)
    return try allocate(pages: max(pages, 1), within: within)
  }

  private func allocateAligned(bytes: UInt64, within: Range<UInt64>?) throws(AllocatorError)
    -> Range<UInt64>
  {
    let result: Result<Range<UInt64>, AllocatorError> = state.withLock { state in
      let limit = pageAlignedInward(Self.intersect(state.window ?? managed, within ?? managed))
      for (i, extent) in state.free.enumerated() {
        let usable = Self.intersect(extent, limit)
        guard usable.length >= bytes else { continue }
        let taken = usable.lowerBound..<(usable.lowerBound + bytes)
        state.free.replaceSubrange(i...i, with: extent.removing(taken))
        return .success(taken)
      }
      let largest = state.free.map { Self.intersect($0, limit).length }.max() ?? 0
      return .failure(.outOfMemory(bytes: bytes, largestFreeRun: largest))
    }
    return try result.get()
  }

  /// Marks a given range as in use: the scratch region, or on the incoming
  /// side a preserved range (memblock_reserve).
  ///
  /// - Throws: ``AllocatorError/notFree(_:)`` unless all of it is free.
  public func reserve(_ range: Range<UInt64>) throws(AllocatorError) {
    try check(range)
    let result: Result<Void, AllocatorError> = state.withLock { state in
      guard let i = Self.index(of: range.lowerBound, in: state.free),
        state.free[i].upperBound >= range.upperBound
      else { return .failure(.notFree(range)) }
      state.free.replaceSubrange(i...i, with: state.free[i].removing(range))
      return .success(())
    }
    try result.get()
  }

  /// Returns a range to the free memory, merging it with its neighbours.
  /// It may be any part of what was allocated or reserved.
  ///
  /// - Throws: ``AllocatorError/notAllocated(_:)`` if any of it is free.
  public func free(_ range: Range<UInt64>) throws(AllocatorError) {
    try check(range)
    let result: Result<Void, AllocatorError> = state.withLock { state in
      // The first extent that ends after the range starts.
      let i = state.free.partitionIndex { $0.upperBound > range.lowerBound }
      if i < state.free.count, state.free[i].lowerBound < range.upperBound {
        return .failure(.notAllocated(range))
      }
      var merged = range
      var first = i
      var last = i  // one past the extents merged into `merged`
      if i > 0, state.free[i - 1].upperBound == range.lowerBound {
        first = i - 1
        merged = state.free[i - 1].lowerBound..<merged.upperBound
      }
      if i < state.free.count, state.free[i].lowerBound == range.upperBound {
        merged = merged.lowerBound..<state.free[i].upperBound
        last = i + 1
      }
      state.free.replaceSubrange(first..<last, with: [merged])
      return .success(())
    }
    try result.get()
  }

  /// Whether every byte of `range` is free.
  public func isFree(_ range: Range<UInt64>) -> Bool {
    state.withLock { state in
      guard let i = Self.index(of: range.lowerBound, in: state.free) else { return false }
      return state.free[i].upperBound >= range.upperBound
    }
  }

  /// The free extents, sorted.
  public var freeRanges: [Range<UInt64>] { state.withLock { $0.free } }

  /// Free bytes, largest free run and number of free runs.
  public var fragmentation: FragmentationReport {
    state.withLock { state in
      FragmentationReport(
        totalBytes: managed.length,
        freeBytes: state.free.reduce(0) { $0 + $1.length },
        largestFreeRun: state.free.map(\.length).max() ?? 0,
        freeRuns: state.free.count)
    }
  }

  /// `range` shrunk to whole pages, so that every allocation stays aligned
  /// even inside an unaligned window.
  private func pageAlignedInward(_ range: Range<UInt64>) -> Range<UInt64> {
    let mask = pageSize - 1
    let low = range.lowerBound & ~mask
    let start = low == range.lowerBound ? low : low &+ pageSize
    let end = range.upperBound & ~mask
    return start < end ? start..<end : start..<start
  }

  private func check(_ range: Range<UInt64>) throws(AllocatorError) {
    guard !range.isEmpty, range.lowerBound % pageSize == 0, range.upperBound % pageSize == 0 else {
      throw .misaligned(range)
    }
    guard managed.contains(range.lowerBound), range.upperBound <= managed.upperBound else {
      throw .outOfRange(range)
    }
  }

  /// The index of the free extent that contains `address`, if any.
  private static func index(of address: UInt64, in free: [Range<UInt64>]) -> Int? {
    let i = free.partitionIndex { $0.upperBound > address }
    return i < free.count && free[i].lowerBound <= address ? i : nil
  }

  private static func intersect(_ a: Range<UInt64>, _ b: Range<UInt64>) -> Range<UInt64> {
    let low = max(a.lowerBound, b.lowerBound)
    let high = min(a.upperBound, b.upperBound)
    return low < high ? low..<high : low..<low
  }
}

extension Range<UInt64> {
  /// This range without `taken`: itself when they do not overlap, else
  /// zero, one or two pieces.
  func removing(_ taken: Range<UInt64>) -> [Range<UInt64>] {
    guard taken.overlaps(self) else { return [self] }
    var pieces: [Range<UInt64>] = []
    if lowerBound < taken.lowerBound { pieces.append(lowerBound..<taken.lowerBound) }
    if taken.upperBound < upperBound { pieces.append(taken.upperBound..<upperBound) }
    return pieces
  }
}

extension Array {
  /// The first index whose element satisfies `isAbove`, for a predicate
  /// that is false then true along the array (binary search).
  func partitionIndex(where isAbove: (Element) -> Bool) -> Int {
    var low = 0
    var high = count
    while low < high {
      let mid = (low + high) / 2
      if isAbove(self[mid]) { high = mid } else { low = mid + 1 }
    }
    return low
  }
}
