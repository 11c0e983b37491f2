// Stateless preservation, as mainline KHO went after the seed: a subsystem
// preserves and unpreserves pages and adds named sub-blobs whenever it
// likes (kho_preserve_pages, kho_unpreserve_pages, kho_add_subtree,
// kho_remove_subtree), and the description of all of it is valid at every
// instant, so that a process that dies without a handover still leaves one
// the next image can trust after validation (kho_retrieve_subtree).

import FDT
import KHOSystem
import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The byte layout of the preservation root: the last ``size`` bytes of the
/// arena, two slots of half that each. A slot is a header, then a kho-v4
/// FDT, then the memory map. An update writes the slot that does not hold
/// the newest valid description, header last, with the next sequence
/// number: a crash at any instant leaves at least one valid slot.
///
/// Slot header (native-endian, 64 bytes):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | magic `"KHOROOT\0"` |
/// | 8 | 4 | version (1) |
/// | 12 | 4 | header size (64) |
/// | 16 | 8 | sequence (1 for the first description; 0: never written) |
/// | 24 | 8 | arena size |
/// | 32 | 8 | page size |
/// | 40 | 8 | generation of the image that wrote it |
/// | 48 | 8 | payload size: the FDT, padded to 8, then the map |
/// | 56 | 8 | FNV-1a 64 over bytes 0..<56 and the payload |
///
/// The FDT is mainline's root: `compatible = "kho-v4"`, a u64
/// `preserved-memory-map` (the arena offset of the map), and one subnode per
/// sub-blob with u64 `preserved-data` (its arena offset) and `blob-size`.
/// The map is a u64 count, then that many {start, end} u64 pairs: sorted,
/// disjoint, page-aligned arena offsets.
public enum PreservationRoot {
  /// Reserved at the end of every arena; untouched pages of it cost nothing.
  public static let size: UInt64 = 2 << 20
  static let slotSize = size / 2
  static let magic: UInt64 = 0x0054_4f4f_524f_484b  // "KHOROOT\0" in memory order
  static let version: UInt32 = 1
  static let compatible = "kho-v4"
  /// The most ranges and sub-blobs one description holds.
  public static let maxRanges = 4096
  /// The most sub-blobs the root names; more is refused (a bound on what the next image reads).
  public static let maxSubtrees = 256

  enum Field {
    static let magic = 0
    static let version = 8
    static let headerSize = 12
    static let sequence = 16
    static let arenaSize = 24
    static let pageSize = 32
    static let generation = 40
    static let payloadSize = 48
    static let checksum = 56
    static let size = 64
  }

  /// Where the root lies in an arena of `arenaSize` bytes.
  public static func range(arenaSize: UInt64) -> Range<UInt64>? {
    guard arenaSize >= size else { return nil }
    return (arenaSize - size)..<arenaSize
  }

  /// A description read back and validated.
  public struct Description: Sendable {
    /// Higher is newer.
    public var sequence: UInt64
    /// The generation of the image that wrote it.
    public var generation: UInt64
    /// The page size the description was written for.
    public var pageSize: UInt64
    /// The preserved ranges, sorted and disjoint.
    public var ranges: [KHOMemoryRange]
    /// The kho-v4 root, with one node per sub-blob.
    public var tree: FlattenedDeviceTree
  }

  /// The page size the slots of an arena file state, read with `pread`
  /// before the arena is mapped (mapping needs it); nil if neither slot
  /// has a plausible header. Only a hint: ``read(_:arenaSize:)`` validates.
  static func peekPageSize(_ fd: FileDescriptor, arenaSize: UInt64) -> UInt64? {
    guard let root = range(arenaSize: arenaSize) else { return nil }
    for slot in 0..<2 {
      let offset = root.lowerBound + UInt64(slot) * slotSize
      guard let header = try? fd.read(upTo: Field.size, at: Int64(offset)),
        header.count == Field.size
      else { continue }
      let fields = header.withUnsafeBytes {
        (
          $0.load(fromByteOffset: Field.magic, as: UInt64.self),
          $0.load(fromByteOffset: Field.pageSize, as: UInt64.self)
        )
      }
      if fields.0 == magic, ArenaPageSize(rawValue: fields.1) != nil { return fields.1 }
    }
    return nil
  }

  /// The newest valid description in `arena`, trusting nothing: magic,
  /// version, sizes, checksum, the FDT (fully validated, root kho-v4), the
  /// map (inside the arena, page-aligned, sorted, disjoint, clear of the
  /// root) and every sub-blob (inside a preserved range).
  ///
  /// - Throws: ``HandoverError/badRecord(_:)`` naming why the newest slot
  ///   that looked written was refused, when no slot is valid.
  public static func read(_ arena: UnsafeRawBufferPointer, pageSize: UInt64) throws(HandoverError)
    -> Description
  {
    guard let root = range(arenaSize: UInt64(arena.count)) else {
      throw .badRecord("the arena is smaller than the preservation root")
    }
    var newest: Description?
    var refusals: [String] = []
    for slot in 0..<2 {
      let start = Int(root.lowerBound) + slot * Int(slotSize)
      let bytes = UnsafeRawBufferPointer(rebasing: arena[start..<start + Int(slotSize)])
      do throws(HandoverError) {
        guard let found = try readSlot(bytes, arena: arena, root: root, pageSize: pageSize) else {
          continue
        }
        if found.sequence > newest?.sequence ?? 0 { newest = found }
      } catch {
        refusals.append("slot \(slot): \(error)")
      }
    }
    guard let newest else {
      throw .badRecord(
        refusals.isEmpty
          ? "no preservation root was ever written"
          : "no valid preservation root (\(refusals.joined(separator: "; ")))")
    }
    return newest
  }

  /// One slot: nil if never written, else its description or why not.
  private static func readSlot(
    _ slot: UnsafeRawBufferPointer, arena: UnsafeRawBufferPointer, root: Range<UInt64>,
    pageSize: UInt64
  ) throws(HandoverError) -> Description? {
    func u64(_ offset: Int) -> UInt64 { slot.load(fromByteOffset: offset, as: UInt64.self) }
    if u64(Field.magic) == 0 && u64(Field.sequence) == 0 { return nil }
    guard u64(Field.magic) == magic else { throw .badRecord("bad magic") }
    guard slot.load(fromByteOffset: Field.version, as: UInt32.self) == version,
      slot.load(fromByteOffset: Field.headerSize, as: UInt32.self) == UInt32(Field.size)
    else { throw .badRecord("unknown version or header size") }
    guard u64(Field.arenaSize) == UInt64(arena.count), u64(Field.pageSize) == pageSize else {
      throw .badRecord("written for another arena")
    }
    let payloadSize = u64(Field.payloadSize)
    guard payloadSize <= slotSize - UInt64(Field.size) else { throw .badRecord("payload size") }
    let payload = UnsafeRawBufferPointer(
      rebasing: slot[Field.size..<Field.size + Int(payloadSize)])
    guard checksum(slot, payload) == u64(Field.checksum) else {
      throw .badRecord("checksum does not match (torn or damaged)")
    }
    // The FDT comes first, its own totalsize (big-endian, at 4) says how long.
    guard payload.count >= 8 else { throw .badBlob("payload of \(payload.count) bytes") }
    let total = Int(UInt32(bigEndian: payload.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
    guard total <= payload.count else { throw .badBlob("FDT size \(total) exceeds the payload") }
    let tree: FlattenedDeviceTree
    do { tree = try FlattenedDeviceTree(bytes: Array(payload.prefix(total))) } catch {
      throw .badBlob("\(error)")
    }
    guard tree.root.property("compatible")?.string == compatible else {
      throw .badBlob("root compatible is not \(compatible)")
    }
    let ranges = try readMap(tree, slot: slot, payload: payload, arena: arena, root: root)
    try checkSubtrees(tree, ranges: ranges, arenaSize: UInt64(arena.count))
    return Description(
      sequence: u64(Field.sequence), generation: u64(Field.generation), pageSize: pageSize,
      ranges: ranges, tree: tree)
  }

  private static func readMap(
    _ tree: FlattenedDeviceTree, slot: UnsafeRawBufferPointer, payload: UnsafeRawBufferPointer,
    arena: UnsafeRawBufferPointer, root: Range<UInt64>
  ) throws(HandoverError) -> [KHOMemoryRange] {
    guard let at = tree.root.property("preserved-memory-map")?.native(UInt64.self), at.count == 1
    else { throw .badBlob("preserved-memory-map is not one u64") }
    // The map must lie inside this slot's payload.
    let payloadStart = UInt64(
      Int(bitPattern: payload.baseAddress!) - Int(bitPattern: arena.baseAddress!))
    let payloadEnd = payloadStart + UInt64(payload.count)
    guard at[0] >= payloadStart, at[0] % 8 == 0, payloadEnd - at[0] >= 8, at[0] < payloadEnd else {
      throw .badBlob("preserved-memory-map 0x\(String(at[0], radix: 16)) is outside its slot")
    }
    let map = UnsafeRawBufferPointer(rebasing: arena[Int(at[0])..<Int(payloadEnd)])
    let count = map.load(as: UInt64.self)
    guard count <= UInt64(maxRanges), UInt64(map.count - 8) / 16 >= count else {
      throw .badBlob("memory map of \(count) ranges")
    }
    var ranges: [KHOMemoryRange] = []
    var previousEnd: UInt64 = 0
    let pageSize = slot.load(fromByteOffset: Field.pageSize, as: UInt64.self)
    for i in 0..<Int(count) {
      let start = map.load(fromByteOffset: 8 + i * 16, as: UInt64.self)
      let end = map.load(fromByteOffset: 16 + i * 16, as: UInt64.self)
      guard start < end, end <= root.lowerBound, start % pageSize == 0, end % pageSize == 0,
        i == 0 || start > previousEnd
      else {
        throw .badBlob(
          "memory map range \(i): 0x\(String(start, radix: 16))..<0x\(String(end, radix: 16))")
      }
      ranges.append(KHOMemoryRange(address: start, length: end - start))
      previousEnd = end
    }
    return ranges
  }

  private static func checkSubtrees(
    _ tree: FlattenedDeviceTree, ranges: [KHOMemoryRange], arenaSize: UInt64
  ) throws(HandoverError) {
    for node in tree.root.children {
      guard let data = node.property("preserved-data")?.native(UInt64.self), data.count == 1,
        let size = node.property("blob-size")?.native(UInt64.self), size.count == 1
      else { throw .badBlob("subtree \(node.name) lacks preserved-data or blob-size") }
      let (end, overflow) = data[0].addingReportingOverflow(size[0])
      guard !overflow,
        ranges.contains(where: { $0.address <= data[0] && end <= $0.end })
      else { throw .badBlob("subtree \(node.name) is not inside preserved memory") }
    }
  }

  static func checksum(_ slot: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer) -> UInt64
  {
    var hash = FNV1a64()
    hash.update(UnsafeRawBufferPointer(rebasing: slot[0..<Field.checksum]))
    hash.update(payload)
    return hash.value
  }
}

/// Why a preserve, an unpreserve or a sub-blob was refused.
public enum PreservationError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The range leaves the arena, is empty, or overlaps the root or scratch.
  case badRange(Range<UInt64>)
  /// A sub-blob's name is not a valid node name.
  case badName(String)
  /// A sub-blob does not lie inside preserved memory.
  case notPreserved(name: String, Range<UInt64>)
  /// More ranges or sub-blobs than a description holds.
  case full
  /// The arena has no room for a root (too small, or the space was taken).
  case unavailable

  public var description: String {
    switch self {
    case .badRange(let r): return "range \(hex(r)) cannot be preserved"
    case .badName(let name): return "\"\(name)\" is not a valid sub-blob name"
    case .notPreserved(let name, let r):
      return "sub-blob \(name) at \(hex(r)) is not inside preserved memory"
    case .full: return "the preservation root is full"
    case .unavailable: return "this arena has no preservation root"
    }
  }
}

/// The stateless side of KHO: what is preserved, described in the arena at
/// every instant. Each call takes effect at once; a process killed at any
/// moment leaves the last complete description.
///
/// ```swift
/// let region = try kho.allocator.allocate(bytes: 64 << 20)
/// try kho.preservation.preserve(region)
/// try kho.preservation.addSubtree("my-cache", at: region.lowerBound..<region.lowerBound + 4096)
/// // killed here: the next image finds "my-cache" with
/// // kho.incoming?.retrieveSubtree("my-cache")
/// ```
public final class KHOPreservation: Sendable {
  private let arena: Arena
  private let root: Range<UInt64>
  private let scratch: Range<UInt64>
  private struct State {
    var ranges: [Range<UInt64>] = []
    var subtrees: [(name: String, at: Range<UInt64>)] = []
    var sequence: UInt64
    var generation: UInt64
    /// The root as last published.
    var published: FlattenedDeviceTree?
  }
  private let state: Mutex<State>

  init(
    arena: Arena, root: Range<UInt64>, scratch: Range<UInt64>, sequence: UInt64, generation: UInt64
  ) {
    self.arena = arena
    self.root = root
    self.scratch = scratch
    self.state = Mutex(State(sequence: sequence, generation: generation))
  }

  /// The preserved ranges, sorted and disjoint.
  public var ranges: [Range<UInt64>] { state.withLock { $0.ranges } }

  /// The sub-blobs, in the order they were added.
  public var subtrees: [(name: String, at: Range<UInt64>)] { state.withLock { $0.subtrees } }

  /// The sequence number of the description in the arena now.
  public var sequence: UInt64 { state.withLock { $0.sequence } }

  /// `kho_preserve_pages`: `range` (widened to whole pages) survives even a
  /// crash of this process; merged with what is preserved already.
  public func preserve(_ range: Range<UInt64>) throws(PreservationError) {
    let pages = try checked(range)
    try update { state throws(PreservationError) in
      state.ranges = Self.union(state.ranges, pages)
      guard state.ranges.count <= PreservationRoot.maxRanges else { throw .full }
    }
  }

  /// `kho_unpreserve_pages`: `range` (narrowed to whole pages) is no longer
  /// preserved. Sub-blobs inside it are removed too.
  public func unpreserve(_ range: Range<UInt64>) throws(PreservationError) {
    let pages = try checked(range)
    try update { state throws(PreservationError) in
      state.ranges = state.ranges.flatMap { $0.removing(pages) }
      state.subtrees.removeAll { sub in
        !state.ranges.contains {
          $0.lowerBound <= sub.at.lowerBound && sub.at.upperBound <= $0.upperBound
        }
      }
    }
  }

  /// `kho_add_subtree`: names the bytes at `at` (inside preserved memory),
  /// replacing a sub-blob of the same name.
  public func addSubtree(_ name: String, at: Range<UInt64>) throws(PreservationError) {
    guard Self.isValidName(name) else { throw .badName(name) }
    try update { state throws(PreservationError) in
      guard
        state.ranges.contains(where: {
          $0.lowerBound <= at.lowerBound && at.upperBound <= $0.upperBound
        }),
        !at.isEmpty
      else { throw .notPreserved(name: name, at) }
      state.subtrees.removeAll { $0.name == name }
      guard state.subtrees.count < PreservationRoot.maxSubtrees else { throw .full }
      state.subtrees.append((name, at))
    }
  }

  /// `kho_remove_subtree`.
  public func removeSubtree(_ name: String) throws(PreservationError) {
    try update { state throws(PreservationError) in state.subtrees.removeAll { $0.name == name } }
  }

  /// The root as this image last published it, a kho-v4 FDT (for `kho
  /// dt`); nil until the first change.
  public var tree: FlattenedDeviceTree? { state.withLock { $0.published } }

  // MARK: Writing

  /// Applies `change` to a copy of the state and publishes it; the state
  /// changes only if the publication succeeds.
  private func update(_ change: (inout State) throws(PreservationError) -> Void)
    throws(PreservationError)
  {
    try state.withLock { current throws(PreservationError) in
      var next = current
      try change(&next)
      next.sequence += 1
      next.published = try publish(next)
      current = next
    }
  }

  /// Writes `state` into the slot that does not hold sequence
  /// `state.sequence - 1`: payload first, then the header, checksum last.
  private func publish(_ state: State) throws(PreservationError) -> FlattenedDeviceTree {
    let slot = Int(state.sequence % 2)
    let slotStart = root.lowerBound + UInt64(slot) * PreservationRoot.slotSize
    let payloadStart = slotStart + UInt64(PreservationRoot.Field.size)
    // The FDT's size does not depend on the map's address: build it once to
    // learn where the map goes, then again with that address.
    guard let probe = try? Self.buildTree(state, mapAt: 0) else { throw .full }
    let mapAt = payloadStart + UInt64((probe.bytes.count + 7) & ~7)
    guard let tree = try? Self.buildTree(state, mapAt: mapAt) else { throw .full }
    var map: [UInt64] = [UInt64(state.ranges.count)]
    for r in state.ranges { map += [r.lowerBound, r.upperBound] }
    let payloadSize = Int(mapAt - payloadStart) + map.count * 8
    guard payloadSize <= Int(PreservationRoot.slotSize) - PreservationRoot.Field.size else {
      throw .full
    }
    let base = arena.base + Int(slotStart)
    typealias F = PreservationRoot.Field
    // Invalidate first, so that a crash in the middle leaves this slot
    // checksum-less rather than half old and half new.
    base.storeBytes(of: UInt64(0), toByteOffset: F.checksum, as: UInt64.self)
    tree.bytes.withUnsafeBytes {
      (base + F.size).copyMemory(from: $0.baseAddress!, byteCount: $0.count)
    }
    map.withUnsafeBytes {
      (arena.base + Int(mapAt)).copyMemory(from: $0.baseAddress!, byteCount: $0.count)
    }
    base.storeBytes(of: PreservationRoot.magic, toByteOffset: F.magic, as: UInt64.self)
    base.storeBytes(of: PreservationRoot.version, toByteOffset: F.version, as: UInt32.self)
    base.storeBytes(of: UInt32(F.size), toByteOffset: F.headerSize, as: UInt32.self)
    base.storeBytes(of: state.sequence, toByteOffset: F.sequence, as: UInt64.self)
    base.storeBytes(of: arena.size, toByteOffset: F.arenaSize, as: UInt64.self)
    base.storeBytes(of: arena.pageSize.bytes, toByteOffset: F.pageSize, as: UInt64.self)
    base.storeBytes(of: state.generation, toByteOffset: F.generation, as: UInt64.self)
    base.storeBytes(of: UInt64(payloadSize), toByteOffset: F.payloadSize, as: UInt64.self)
    let slotBytes = UnsafeRawBufferPointer(start: base, count: Int(PreservationRoot.slotSize))
    let payload = UnsafeRawBufferPointer(rebasing: slotBytes[F.size..<F.size + payloadSize])
    let sum = PreservationRoot.checksum(slotBytes, payload)
    // The compiler must not sink the stores above past the checksum's.
    atomicThreadFenceRelease()
    base.storeBytes(of: sum, toByteOffset: F.checksum, as: UInt64.self)
    return tree
  }

  private static func buildTree(_ state: State, mapAt: UInt64) throws(FDTError)
    -> FlattenedDeviceTree
  {
    var writer = FDTWriter(layout: .libfdt)
    try writer.beginNode("")
    try writer.property("compatible", string: PreservationRoot.compatible)
    try writer.property("preserved-memory-map", native: [mapAt])
    for sub in state.subtrees {
      try writer.beginNode(sub.name)
      try writer.property("preserved-data", native: [sub.at.lowerBound])
      try writer.property("blob-size", native: [UInt64(sub.at.count)])
      try writer.endNode()
    }
    try writer.endNode()
    return try FlattenedDeviceTree(bytes: try writer.finish())
  }

  // MARK: Ranges

  private func checked(_ range: Range<UInt64>) throws(PreservationError) -> Range<UInt64> {
    let page = arena.pageSize.bytes
    let start = range.lowerBound & ~(page - 1)
    let (rounded, overflow) = range.upperBound.addingReportingOverflow(page - 1)
    guard !overflow, !range.isEmpty else { throw .badRange(range) }
    let pages = start..<(rounded & ~(page - 1))
    guard pages.upperBound <= root.lowerBound, !pages.overlaps(scratch) else {
      throw .badRange(range)
    }
    return pages
  }

  static func union(_ ranges: [Range<UInt64>], _ added: Range<UInt64>) -> [Range<UInt64>] {
    var result: [Range<UInt64>] = []
    var merged = added
    for r in ranges {
      if r.upperBound < merged.lowerBound || merged.upperBound < r.lowerBound {
        result.append(r)
      } else {
        merged = min(r.lowerBound, merged.lowerBound)..<max(r.upperBound, merged.upperBound)
      }
    }
    result.append(merged)
    return result.sorted { $0.lowerBound < $1.lowerBound }
  }

  static func isValidName(_ name: String) -> Bool {
    let bytes = Array(name.utf8)
    guard (1...31).contains(bytes.count) else { return false }
    return bytes.allSatisfy { c in
      (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c)
        || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c)
        || c == UInt8(ascii: "-") || c == UInt8(ascii: "_") || c == UInt8(ascii: ".")
        || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(c)
    }
  }
}

@inline(__always) func atomicThreadFenceRelease() {
  atomicMemoryFence(ordering: .releasing)
}
