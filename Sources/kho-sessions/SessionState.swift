// The service's whole state: two arena hash maps in one preserved range of
// the KHO arena, described to the next image by one KHO node.

import FDT
import KHO
import KHOCollections
import KHOServiceLifecycle
import Logging
import Synchronization

/// A rate limiter's fixed window: when it opened (wall-clock seconds) and
/// the requests counted in it. Its layout is part of the node's version.
struct RateWindow: ArenaFixedWidth {
  var opened: UInt64
  var count: UInt64
}

/// Sessions (id → user) and rate-limit windows (client → window), each an
/// ``ArenaHashMap`` in its half of one arena range, behind one lock.
///
/// Mutations are refused while KHO has frozen the state for the next image
/// (the range is then part of the handover).
final class SessionState: Sendable {
  /// The node's `compatible`: the layout of both maps and of ``RateWindow``
  /// (v2: the maps' own layout v2, KHOCollections' open-addressed table).
  static let compatible = "kho-sessions,state-v2"
  static let nodeName = "kho-sessions"

  /// Unchecked: the maps are classes over raw arena memory, and they are
  /// only ever reached inside `maps`'s lock.
  struct Maps: @unchecked Sendable {
    let sessions: ArenaHashMap<String, String>
    let rates: ArenaHashMap<String, RateWindow>
    var frozen = false
  }

  let maps: Mutex<Maps>
  /// Arena offsets of the range both maps live in.
  let range: Range<UInt64>

  private init(_ maps: sending Maps, range: Range<UInt64>) {
    self.maps = Mutex(maps)
    self.range = range
  }

  // MARK: Making and adopting

  /// New, empty maps in `bytes` fresh arena pages.
  static func fresh(in kho: KHO, bytes: UInt64) throws -> SessionState {
    let pages = try kho.allocator.allocate(bytes: bytes)
    let (sessions, rates) = halves(kho, pages)
    let maps = Maps(
      sessions: try ArenaHashMap.format(sessions, bucketCount: 4096),
      rates: try ArenaHashMap.format(rates, bucketCount: 1024))
    return SessionState(maps, range: pages)
  }

  /// The range the previous image handed over, found by its node and
  /// claimed, its bytes not read yet (an overlapped predecessor may still
  /// write them until `ready()`); nil when there is none or it is refused
  /// (logged: the service then starts empty).
  static func claim(from kho: KHO, logger: Logger) -> Range<UInt64>? {
    guard let incoming = kho.incoming else { return nil }
    guard let node = incoming.findNode(path: "/\(nodeName)") else {
      logger.notice("kho-sessions: no state was handed over, starting empty")
      return nil
    }
    do {
      guard node.property("compatible")?.strings?.contains(compatible) == true else {
        throw Refusal("compatible is not \(compatible)")
      }
      guard let mem = node.property("mem")?.native(UInt64.self), mem.count == 2 else {
        throw Refusal("mem is not one {addr, len} pair")
      }
      _ = try incoming.claim(KHOMemoryRange(address: mem[0], length: mem[1]))
      return mem[0]..<mem[0] + mem[1]
    } catch {
      logger.error("kho-sessions: refusing the handed-over state, starting empty: \(error)")
      return nil
    }
  }

  /// Attaches the maps in a claimed range (O(1): their headers checked);
  /// nil when a header is refused (logged; the range is returned).
  static func attach(_ pages: Range<UInt64>, in kho: KHO, logger: Logger) -> SessionState? {
    let (sessions, rates) = halves(kho, pages)
    do {
      let maps = Maps(
        sessions: try ArenaHashMap.attach(sessions), rates: try ArenaHashMap.attach(rates))
      return SessionState(maps, range: pages)
    } catch {
      logger.error("kho-sessions: refusing the handed-over maps, starting empty: \(error)")
      try? kho.incoming?.returnMemory(
        KHOMemoryRange(address: pages.lowerBound, length: pages.upperBound - pages.lowerBound))
      return nil
    }
  }

  /// The two halves of the range, as buffers in the arena.
  private static func halves(_ kho: KHO, _ pages: Range<UInt64>)
    -> (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer)
  {
    let base = kho.arena.base + Int(pages.lowerBound)
    let half = Int(pages.upperBound - pages.lowerBound) / 2
    return (
      UnsafeMutableRawBufferPointer(start: base, count: half),
      UnsafeMutableRawBufferPointer(start: base + half, count: half)
    )
  }

  /// The KHO node: DUMP describes the range (which never moves), FREEZE
  /// stops mutations until UNFREEZE or ABORT.
  func register(with kho: KHO) throws {
    let offset = range.lowerBound
    let length = range.upperBound - range.lowerBound
    try kho.outgoing.register(
      KHONotifier(
        name: Self.nodeName,
        dump: { writer in
          try writer.beginNode(Self.nodeName)
          try writer.property("compatible", string: Self.compatible)
          try writer.property("mem", native: [offset, length])
          try writer.endNode()
        },
        abort: { [self] in setFrozen(false) },
        freeze: { [self] in setFrozen(true) },
        unfreeze: { [self] in setFrozen(false) }))
  }

  private func setFrozen(_ frozen: Bool) {
    maps.withLock { $0.frozen = frozen }
  }

  struct Refusal: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
  }
}

/// What a mutation found.
enum Mutation<T> {
  case done(T)
  /// KHO froze the state for the next image.
  case frozen
}

extension SessionState {
  /// Runs `body` on the maps unless they are frozen.
  func mutate<T>(_ body: (inout Maps) throws -> T) rethrows -> Mutation<T> {
    try maps.withLock { maps in
      if maps.frozen { return .frozen }
      return .done(try body(&maps))
    }
  }

  /// Counts one request of `client` in its window; returns the count so
  /// far in the window, or nil when frozen.
  func countRequest(client: String, window: UInt64, now: UInt64) -> UInt64? {
    let result = mutate { maps -> UInt64 in
      var current = maps.rates[client] ?? RateWindow(opened: now, count: 0)
      if now >= current.opened &+ window { current = RateWindow(opened: now, count: 0) }
      current.count &+= 1
      try? maps.rates.set(client, current, expiresAt: current.opened &+ window)
      return current.count
    }
    if case .done(let count) = result { return count }
    return nil
  }
}

extension SessionState {
  /// Both maps' figures, beside the handover's (`kho_store_*`).
  func record(in metrics: HandoverMetrics) {
    let (items, evictions, damage) = maps.withLock { maps in
      (
        maps.sessions.count + maps.rates.count,
        Int(clamping: maps.sessions.evictions &+ maps.rates.evictions),
        maps.sessions.damage + maps.rates.damage
      )
    }
    metrics.recordStore(
      items: items, bytes: Int(range.upperBound - range.lowerBound), evictions: evictions,
      damaged: damage)
  }
}
