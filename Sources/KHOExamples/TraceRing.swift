import FDT
import KHO
import Synchronization

/// A ring buffer of trace records in the arena that survives handover, as
/// the KHO series' ftrace patches keep the trace buffer across kexec.
///
/// Layout at its arena offset (native-endian):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | magic `"KHOTRACE"` |
/// | 8 | 4 | format version (1) |
/// | 12 | 4 | record size (64) |
/// | 16 | 8 | capacity in records |
/// | 24 | 8 | records ever written (the next sequence number) |
/// | 64 | 64 × capacity | records: `u64 sequence`, `u32 length`, 52 bytes of text |
///
/// Its KHO node is `trace-ring` with `compatible = "kho-trace-ring-v1"`, a
/// `mem` range and `format-version`.
///
/// ```swift
/// let ring = try TraceRing.restore(from: kho) ?? TraceRing.create(in: kho, capacity: 1024)
/// try ring.append("request served")
/// ```
public final class TraceRing: Sendable {
  public static let compatible = "kho-trace-ring-v1"
  public static let formatVersion: UInt32 = 1
  static let magic: UInt64 = 0x4543_4152_544f_484b  // "KHOTRACE" in memory order
  static let headerSize = 64
  public static let recordSize = 64
  public static let maxText = 52

  /// Why an incoming ring was refused.
  public enum Failure: Error, Sendable, Equatable, CustomStringConvertible {
    case badNode(String)
    case claim(ClaimError)
    case badHeader(String)
    case frozen
    case allocation(AllocatorError)
    case notifier(NotifierError)

    public var description: String {
      switch self {
      case .badNode(let s): return "trace ring node: \(s)"
      case .claim(let e): return "trace ring memory: \(e)"
      case .badHeader(let s): return "trace ring header: \(s)"
      case .frozen: return "trace ring is frozen while KHO is active"
      case .allocation(let e): return "trace ring allocation: \(e)"
      case .notifier(let e): return "trace ring notifier: \(e)"
      }
    }
  }

  private let kho: KHO
  /// Where the ring lives in the arena.
  public let range: KHOMemoryRange
  private let lock = Mutex(())

  private init(kho: KHO, range: KHOMemoryRange) {
    self.kho = kho
    self.range = range
  }

  /// The number of records the ring holds.
  public var capacity: UInt64 { field(16) }
  /// Records ever appended; the sequence number of the next one.
  public var written: UInt64 { field(24) }

  /// Allocates a new, empty ring of `capacity` records and registers it
  /// with KHO.
  public static func create(in kho: KHO, capacity: UInt64) throws(Failure) -> TraceRing {
    let bytes = UInt64(headerSize) + capacity * UInt64(recordSize)
    let pages: Range<UInt64>
    do { pages = try kho.allocator.allocate(bytes: bytes) } catch { throw .allocation(error) }
    let ring = TraceRing(kho: kho, range: KHOMemoryRange(address: pages.lowerBound, length: bytes))
    ring.store(magic, 0)
    ring.store32(formatVersion, 8)
    ring.store32(UInt32(recordSize), 12)
    ring.store(capacity, 16)
    ring.store(0, 24)
    try ring.registerNotifier()
    return ring
  }

  /// Finds, checks and claims the ring the previous image handed over, or
  /// returns `nil` when there is none.
  public static func restore(from kho: KHO) throws(Failure) -> TraceRing? {
    guard let incoming = kho.incoming, let node = incoming.findNode(compatible: compatible) else {
      return nil
    }
    guard node.property("format-version")?.native(UInt32.self) == [formatVersion] else {
      throw .badNode("format-version is not \(formatVersion)")
    }
    guard let mem = node.property("mem")?.native(UInt64.self), mem.count == 2 else {
      throw .badNode("mem is not one {addr, len} pair")
    }
    let range = KHOMemoryRange(address: mem[0], length: mem[1])
    do { _ = try incoming.claim(range) } catch { throw .claim(error) }
    let ring = TraceRing(kho: kho, range: range)
    guard ring.field(0) == magic else { throw .badHeader("bad magic") }
    guard ring.field32(12) == UInt32(recordSize),
      UInt64(headerSize) + ring.capacity * UInt64(recordSize) == range.length
    else {
      throw .badHeader("capacity \(ring.capacity) does not fit its \(range.length) bytes")
    }
    try ring.registerNotifier()
    return ring
  }

  /// Appends a record (its text cut to 52 bytes). Refused while KHO is
  /// active: the ring is then part of the serialized state.
  public func append(_ text: String) throws(Failure) {
    let result = try? kho.outgoing.withMutation { () -> Void in
      lock.withLock { _ in
        let sequence = written
        let at = Self.headerSize + Int(sequence % capacity) * Self.recordSize
        let bytes = Array(text.utf8.prefix(Self.maxText))
        store(sequence, at)
        store32(UInt32(bytes.count), at + 8)
        let base = kho.arena.base + Int(range.address) + at + 12
        bytes.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        store(sequence + 1, 24)
      }
    }
    if result == nil { throw .frozen }
  }

  /// The records still in the ring, oldest first.
  public func records() -> [(sequence: UInt64, text: String)] {
    lock.withLock { _ in
      let end = written
      let start = end > capacity ? end - capacity : 0
      return (start..<end).map { sequence in
        let at = Self.headerSize + Int(sequence % capacity) * Self.recordSize
        let length = min(Int(field32(at + 8)), Self.maxText)
        let base = UnsafeRawBufferPointer(
          start: kho.arena.base + Int(range.address) + at + 12, count: length)
        return (field(at), String(decoding: base, as: UTF8.self))
      }
    }
  }

  private func registerNotifier() throws(Failure) {
    let range = self.range
    let notifier = KHONotifier(
      name: "trace-ring",
      dump: { writer in
        try writer.beginNode("trace-ring")
        try writer.property("compatible", string: TraceRing.compatible)
        try writer.property("format-version", native: [TraceRing.formatVersion])
        try writer.property("mem", native: [range.address, range.length])
        try writer.endNode()
      })
    do { try kho.outgoing.register(notifier) } catch { throw .notifier(error) }
  }

  private func field(_ at: Int) -> UInt64 {
    (kho.arena.base + Int(range.address) + at).loadUnaligned(as: UInt64.self)
  }
  private func field32(_ at: Int) -> UInt32 {
    (kho.arena.base + Int(range.address) + at).loadUnaligned(as: UInt32.self)
  }
  private func store(_ v: UInt64, _ at: Int) {
    (kho.arena.base + Int(range.address) + at).storeBytes(of: v, as: UInt64.self)
  }
  private func store32(_ v: UInt32, _ at: Int) {
    (kho.arena.base + Int(range.address) + at).storeBytes(of: v, as: UInt32.self)
  }
}
