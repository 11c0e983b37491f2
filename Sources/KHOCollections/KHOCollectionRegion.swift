import FDT
import KHO

/// A range of the KHO arena that one collection lives in, wired into KHO
/// as a subsystem: on DUMP it describes itself as a node
/// (`compatible`, `mem = <address length>`); in the next image
/// ``open(in:name:compatible:bytes:ifIncompatible:)`` finds that node, checks it, and
/// claims the range, so the collection's `attach` finds its bytes where
/// the previous image left them.
///
/// ```swift
/// let region = try KHOCollectionRegion.open(
///   in: kho, name: "sessions", compatible: ArenaHashMap<String, [UInt8]>.compatible,
///   bytes: 64 << 20)
/// let sessions = region.handedOver
///   ? try ArenaHashMap<String, [UInt8]>.attach(region.bytes)
///   : try ArenaHashMap<String, [UInt8]>.format(region.bytes)
/// ```
///
/// **Growth**: when the handed-over range is smaller than `bytes`, a new
/// range of `bytes` is allocated, the old bytes are copied to its start
/// (collections are addressed by offsets, so the copy needs no fix-up) and
/// the old range is given back; the collection's `attach` then grows into
/// the rest.
public final class KHOCollectionRegion: Sendable {
  /// The node's name under the KHO tree's root.
  public let name: String
  /// The node's `compatible` string: the collection's layout and version.
  public let compatible: String
  /// Where the collection lives in the arena.
  public let range: KHOMemoryRange
  /// Whether the bytes are the previous image's (attach them) rather than
  /// fresh (format them).
  public let handedOver: Bool
  /// Whether the handed-over bytes were copied into a bigger range.
  public let grown: Bool
  /// Why a handed-over node was not used, when
  /// ``IncompatibleNode/startCold`` let the region start fresh instead
  /// (`nil` when there was no node or it was used).
  public let refused: String?
  private let base: UInt

  /// The collection's bytes.
  public var bytes: UnsafeMutableRawBufferPointer {
    UnsafeMutableRawBufferPointer(
      start: UnsafeMutableRawPointer(bitPattern: base), count: Int(range.length))
  }

  /// Why a region could not be opened.
  public enum Failure: Error, Sendable, CustomStringConvertible {
    /// The handed-over node is malformed.
    case badNode(String)
    /// Its memory could not be claimed.
    case claim(ClaimError)
    /// The arena has no room for the region.
    case allocation(AllocatorError)
    /// The DUMP notifier could not be registered.
    case notifier(NotifierError)

    public var description: String {
      switch self {
      case .badNode(let why): return "collection node: \(why)"
      case .claim(let error): return "collection memory: \(error)"
      case .allocation(let error): return "collection allocation: \(error)"
      case .notifier(let error): return "collection notifier: \(error)"
      }
    }
  }

  /// What ``open(in:name:compatible:bytes:ifIncompatible:)`` does with a
  /// handed-over node of the same name whose `compatible` is not the one
  /// asked for (another collection, or another layout version of it), or
  /// whose `mem` is malformed.
  public enum IncompatibleNode: Sendable {
    /// Throw ``Failure/badNode(_:)``; the node's memory stays unclaimed.
    case fail
    /// Leave the node's memory unclaimed (the KHO core gives it back when
    /// start-up finishes), allocate a fresh range, and say why in
    /// ``refused``: the collection is formatted empty, a cold start.
    case startCold
  }

  private init(
    kho: KHO, name: String, compatible: String, range: KHOMemoryRange, handedOver: Bool,
    grown: Bool, refused: String? = nil
  ) {
    self.name = name
    self.compatible = compatible
    self.range = range
    self.handedOver = handedOver
    self.grown = grown
    self.refused = refused
    self.base = UInt(bitPattern: kho.arena.base + Int(range.address))
  }

  /// Finds and claims the node `name` the previous image handed over, or
  /// allocates `bytes` of the arena when there is none; then registers the
  /// notifier that describes it on DUMP.
  ///
  /// - Parameters:
  ///   - kho: The KHO core of this image.
  ///   - name: The node's name, the same in every version of the service.
  ///   - compatible: The collection's layout and version
  ///     (``ArenaHashMap/compatible``, ...); a node with another one is
  ///     never handed to the collection.
  ///   - bytes: The size this version wants; a smaller handed-over range is
  ///     copied into a new one of this size.
  ///   - ifIncompatible: What to do with a node of another `compatible`.
  /// - Returns: The region; format the collection when
  ///   ``handedOver`` is false, attach it when true.
  public static func open(
    in kho: KHO, name: String, compatible: String, bytes: UInt64,
    ifIncompatible: IncompatibleNode = .fail
  ) throws(Failure) -> KHOCollectionRegion {
    var refused: String? = nil
    var region: KHOCollectionRegion? = nil
    do {
      region = try claimHandedOver(kho, name: name, compatible: compatible, bytes: bytes)
    } catch .badNode(let why) where ifIncompatible == .startCold {
      refused = why
    }
    if region == nil {
      region = KHOCollectionRegion(
        kho: kho, name: name, compatible: compatible,
        range: try allocate(kho, bytes: bytes), handedOver: false, grown: false, refused: refused)
    }
    guard let region else { preconditionFailure("set just above") }
    try region.register(with: kho)
    return region
  }

  private static func allocate(_ kho: KHO, bytes: UInt64) throws(Failure) -> KHOMemoryRange {
    do {
      let pages = try kho.allocator.allocate(bytes: bytes)
      return KHOMemoryRange(address: pages.lowerBound, length: bytes)
    } catch { throw .allocation(error) }
  }

  private static func claimHandedOver(
    _ kho: KHO, name: String, compatible: String, bytes: UInt64
  ) throws(Failure) -> KHOCollectionRegion? {
    guard let incoming = kho.incoming,
      let node = incoming.findNode(where: { $0.name == name })
    else { return nil }
    let found = node.property("compatible")?.string
    guard found == compatible else {
      // Both strings in the message: a version bump reads as one at a glance.
      throw .badNode("\(name) is \(found ?? "without compatible"), not \(compatible)")
    }
    guard let mem = node.property("mem")?.native(UInt64.self), mem.count == 2 else {
      throw .badNode("mem is not one {address, length} pair")
    }
    let old = KHOMemoryRange(address: mem[0], length: mem[1])
    let oldBytes: UnsafeMutableRawBufferPointer
    do { oldBytes = try incoming.claim(old) } catch { throw .claim(error) }
    guard old.length < bytes else {
      return KHOCollectionRegion(
        kho: kho, name: name, compatible: compatible, range: old, handedOver: true, grown: false)
    }
    let range = try allocate(kho, bytes: bytes)
    let grown = KHOCollectionRegion(
      kho: kho, name: name, compatible: compatible, range: range, handedOver: true, grown: true)
    grown.bytes.baseAddress!.copyMemory(from: oldBytes.baseAddress!, byteCount: oldBytes.count)
    try? incoming.returnMemory(old)
    return grown
  }

  private func register(with kho: KHO) throws(Failure) {
    let (name, compatible, range) = (self.name, self.compatible, self.range)
    let notifier = KHONotifier(
      name: "kho-collections:\(name)",
      dump: { writer in
        try writer.beginNode(name)
        try writer.property("compatible", string: compatible)
        try writer.property("mem", native: [range.address, range.length])
        try writer.endNode()
      })
    do { try kho.outgoing.register(notifier) } catch { throw .notifier(error) }
  }
}
