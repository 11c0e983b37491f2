// The outgoing half, the seed's kernel/kexec_kho_out.c: the notifier chain,
// serialize and abort, and the state the attributes show.

import FDT
import KHOSystem
import Logging
import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Why ``KHOOutgoing/serialize()`` or ``KHOOutgoing/freeze()`` failed.
/// After a failed serialize, ABORT has run and the state is inactive; after
/// a failed freeze, UNFREEZE has run and the state is active.
public enum SerializeError: Error, Sendable, Equatable, CustomStringConvertible {
  /// Already active: serialize once, abort to serialize again.
  case alreadyActive
  /// Not active: FREEZE needs a serialized handover.
  case notActive
  /// A DUMP notifier failed with this (negative) errno.
  case notifier(errno: Int32)
  /// The blob did not fit even after growing the buffer.
  case noSpace(capacity: Int, attempts: Int)
  /// The writer refused a step (a notifier left a node open...).
  case writer(FDTError)
  /// The finished blob failed its header check.
  case invalidBlob(FDTError)

  /// The errno of the failure, positive (the `active` attribute reports
  /// EINVAL for all of them, as the seed does).
  public var errno: Errno {
    switch self {
    case .alreadyActive: return .resourceBusy
    case .notActive: return .invalidArgument
    case .notifier(let err): return Errno(rawValue: -err)
    case .noSpace: return .noSpace
    case .writer, .invalidBlob: return .invalidArgument
    }
  }

  public var description: String {
    switch self {
    case .alreadyActive: return "KHO is already active"
    case .notActive: return "KHO is not active"
    case .notifier(let err):
      return "a KHO notifier failed: \(Errno(rawValue: -err))"
    case .noSpace(let capacity, let attempts):
      return "the KHO blob does not fit in \(capacity) bytes after \(attempts) attempts"
    case .writer(let e): return "writing the KHO blob failed: \(e)"
    case .invalidBlob(let e): return "the KHO blob is invalid: \(e)"
    }
  }
}

/// The outgoing side of KHO: subsystems register notifiers; ``serialize()``
/// asks each to DUMP its state into one FDT, which then is ``dt``;
/// ``abort()`` cancels.
///
/// ```swift
/// let kho = KHOOutgoing(scratch: scratch)
/// try kho.register(KHONotifier(name: "cache", dump: { writer in
///   try writer.beginNode("cache")
///   try writer.property("compatible", string: "example-cache-v1")
///   try writer.endNode()
/// }))
/// try kho.serialize()
/// let blob = kho.dt!.bytes
/// ```
///
/// ## The states, and who may change what in each
///
/// | State | Entered by | The blob | A subsystem's state |
/// |---|---|---|---|
/// | inactive | start, ``abort()`` | none | anything |
/// | active | ``serialize()`` (DUMP) | fixed | the bytes of its `mem` ranges may change, the ranges and node may not |
/// | frozen | ``freeze()`` (FREEZE) | fixed | nothing changes |
/// | handed over | the exec, or the commit of an overlapped handover | the next image's | the next image's |
///
/// ``abort()`` goes back to inactive from active or frozen; from frozen it
/// runs UNFREEZE first, then ABORT. ``isActive`` is true in active and
/// frozen, so the `active` control file reads as ABI.md says.
///
/// A subsystem of the seed's kind stops changing its state in DUMP: it
/// does every change inside ``withMutation(_:)``, which refuses with EBUSY
/// from the start of ``serialize()``; and ``serialize()`` waits for
/// mutations in flight before it DUMPs, so no change can slip between a
/// check and the DUMP. A subsystem of the two-phase kind goes on serving
/// after DUMP and stops at FREEZE, which the runtime sends as late as it
/// can: right before an exec in place, and once an overlapped next image
/// has reported itself prepared.
public final class KHOOutgoing: Sendable {
  /// The seed's default `dt_max`: 10 MiB.
  public static let defaultDTMax: UInt64 = 0xa0_0000
  /// How often ``serialize()`` tries before giving up on a blob that does
  /// not fit.
  public static let maxAttempts = 8
  /// The largest buffer ``serialize()`` grows to (unless `dt_max` is larger).
  public static let growthLimit = 1 << 30

  /// The scratch region (`kho_scratch_phys`, `kho_scratch_len`); empty when
  /// there is none, and then KHO refuses to activate.
  public let scratch: Range<UInt64>
  /// The DUMP/ABORT chain.
  public let notifiers = NotifierChain<KHOEvent, FDTWriter?>()
  private let logger: Logger

  private struct State {
    var dtMax: UInt64
    var dt: FlattenedDeviceTree?
    /// FREEZE ran and UNFREEZE has not.
    var frozen = false
  }
  /// The seed's `kho.lock`: held for serialize, abort and `dt_max`.
  private let state: Mutex<State>
  /// Bit 63: active (or serializing); lower bits: mutations in flight.
  /// Atomic so that ``isActive`` and ``withMutation(_:)`` never take the
  /// lock, which DUMP callbacks run under.
  private let gate = Atomic<UInt64>(0)
  private static let activeBit: UInt64 = 1 << 63

  /// Creates the outgoing side.
  ///
  /// - Parameters:
  ///   - scratch: the scratch region; empty for none.
  ///   - dtMax: the initial blob buffer size.
  ///   - logger: where failures are logged.
  public init(
    scratch: Range<UInt64>, dtMax: UInt64 = defaultDTMax,
    logger: Logger = Logger(label: "kho.out")
  ) {
    self.scratch = scratch
    self.state = Mutex(State(dtMax: dtMax, dt: nil))
    self.logger = logger
  }

  /// `register_kho_notifier`.
  ///
  /// DUMP and ABORT run under the outgoing lock: a notifier may read
  /// ``isActive`` but must not call ``serialize()``, ``abort()``, ``dt``,
  /// ``dtMax`` or ``setDTMax(_:)``.
  public func register(_ notifier: KHONotifier) throws(NotifierError) {
    try notifiers.register(notifier)
  }

  /// `unregister_kho_notifier`.
  public func unregister(_ notifier: KHONotifier) throws(NotifierError) {
    try notifiers.unregister(notifier)
  }

  /// `kho_is_active`: true from the start of a serialize until abort.
  /// Lock-free, so callable from a notifier.
  public var isActive: Bool { gate.load(ordering: .acquiring) & Self.activeBit != 0 }

  /// ``isActive`` as seen under the lock, as the seed's `active_show`
  /// reads it: a serialize in progress is waited for.
  var isActiveSettled: Bool { state.withLock { _ in isActive } }

  /// The blob, while active.
  public var dt: FlattenedDeviceTree? { state.withLock { $0.dt } }

  /// Whether FREEZE has run (and UNFREEZE has not): the preserved state is
  /// immutable until the handover completes or aborts.
  public var isFrozen: Bool { state.withLock { $0.frozen } }

  /// The buffer size serialize starts with (`dt_max`).
  public var dtMax: UInt64 { state.withLock { $0.dtMax } }

  /// Sets `dt_max`. Unlike the seed, under the lock and never while active.
  ///
  /// - Throws: `Errno/resourceBusy`` while active.
  public func setDTMax(_ value: UInt64) throws(Errno) {
    let ok = state.withLock { state -> Bool in
      if isActive { return false }
      state.dtMax = value
      return true
    }
    if !ok { throw .resourceBusy }
  }

  /// Runs `body`, a change to state that a subsystem serializes, unless KHO
  /// is active. Serialize waits for it to finish before freezing.
  ///
  /// Do not call it from a notifier (it would throw EBUSY: DUMP runs frozen)
  /// nor call ``serialize()`` from `body` (it would wait for itself).
  ///
  /// - Throws: `Errno/resourceBusy`` while active.
  public func withMutation<R, E: Error>(_ body: () throws(E) -> R) throws(Errno) -> Result<R, E> {
    var current = gate.load(ordering: .acquiring)
    while true {
      if current & Self.activeBit != 0 { throw .resourceBusy }
      let (exchanged, original) = gate.compareExchange(
        expected: current, desired: current + 1, ordering: .acquiringAndReleasing)
      if exchanged { break }
      current = original
    }
    defer { gate.subtract(1, ordering: .releasing) }
    do throws(E) { return .success(try body()) } catch { return .failure(error) }
  }

  /// `kho_serialize`, the seed's sequence: a writer of `dt_max` bytes, an
  /// empty reservation map, root node, `compatible = "kho-v1"`, the DUMP
  /// chain, end of root, finish, header check, expose as ``dt``.
  ///
  /// Beyond the seed: a blob that does not fit (the writer's `noSpace`, or
  /// a notifier returning `-ENOSPC`) runs ABORT, doubles the buffer and
  /// DUMPs again, up to ``maxAttempts`` times and ``growthLimit`` bytes.
  ///
  /// - Throws: ``SerializeError``; ABORT has then run, nothing is kept and
  ///   the state is inactive.
  public func serialize() throws(SerializeError) {
    try state.withLock { state throws(SerializeError) in
      if isActive { throw .alreadyActive }
      closeGate()
      do throws(SerializeError) {
        state.dt = try dumpGrowing(from: state.dtMax)
      } catch {
        logger.error("kho failed to serialize state: \(error)")
        abortLocked(&state)
        throw error
      }
    }
  }

  /// FREEZE, the last step before the next image takes over: every
  /// notifier stops changing its preserved state. Nothing happens when
  /// already frozen.
  ///
  /// - Throws: ``SerializeError/notifier(errno:)`` when a notifier vetoes
  ///   (UNFREEZE has then run for every notifier, and the state is active
  ///   again: abort or retry); ``SerializeError/notActive`` when inactive.
  public func freeze() throws(SerializeError) {
    try state.withLock { state throws(SerializeError) in
      guard isActive else { throw .notActive }
      if state.frozen { return }
      var none: FDTWriter? = nil
      let err = notifiers.call(.freeze, &none).errno
      guard err == 0 else {
        logger.error("kho: a notifier refused to freeze: \(Errno(rawValue: -err))")
        notifiers.call(.unfreeze, &none)
        throw .notifier(errno: err)
      }
      state.frozen = true
    }
  }

  /// `kho_abort`: drops the blob, runs UNFREEZE if frozen, then the ABORT
  /// chain, and becomes inactive. Nothing happens when inactive.
  public func abort() {
    state.withLock { abortLocked(&$0) }
  }

  private func abortLocked(_ state: inout State) {
    guard isActive else { return }
    var none: FDTWriter? = nil
    if state.frozen {
      notifiers.call(.unfreeze, &none)
      state.frozen = false
    }
    state.dt = nil
    notifiers.call(.abort, &none)
    gate.bitwiseAnd(~Self.activeBit, ordering: .releasing)
  }

  /// Sets the active bit, then waits for mutations in flight to finish; new
  /// ones are refused from the moment the bit is set.
  private func closeGate() {
    gate.bitwiseOr(Self.activeBit, ordering: .acquiringAndReleasing)
    while gate.load(ordering: .acquiring) & ~Self.activeBit != 0 {
      sched_yield()
    }
  }

  private func dumpGrowing(from dtMax: UInt64) throws(SerializeError) -> FlattenedDeviceTree {
    // A blob's totalsize is 32 bits; a larger buffer could never be used.
    var capacity = Int(min(dtMax, UInt64(UInt32.max)))
    let limit = max(capacity, Self.growthLimit)
    var attempt = 1
    while true {
      do throws(SerializeError) {
        return try dumpOnce(capacity: capacity)
      } catch .noSpace {
        guard attempt < Self.maxAttempts, capacity < limit else {
          throw .noSpace(capacity: capacity, attempts: attempt)
        }
        // Subsystems may have taken resources during the failed DUMP.
        var none: FDTWriter? = nil
        notifiers.call(.abort, &none)
        let next = min(max(capacity * 2, 4096), limit)
        logger.notice(
          "KHO blob does not fit in \(capacity) bytes (dt_max); retrying with \(next) bytes")
        capacity = next
        attempt += 1
      }
    }
  }

  /// One pass of the seed's sequence with a buffer of `capacity` bytes.
  private func dumpOnce(capacity: Int) throws(SerializeError) -> FlattenedDeviceTree {
    var writer: FDTWriter? = FDTWriter(layout: .libfdt, capacity: capacity)
    do throws(FDTError) {
      try writer!.beginNode("")
      try writer!.property("compatible", string: "kho-v1")
    } catch { throw Self.mapWriter(error, capacity) }

    let err = notifiers.call(.dump, &writer).errno
    if err == -ENOSPC { throw .noSpace(capacity: capacity, attempts: 1) }
    if err != 0 { throw .notifier(errno: err) }
    guard var writer else { throw .notifier(errno: -EINVAL) }

    let bytes: [UInt8]
    do throws(FDTError) {
      try writer.endNode()
      bytes = try writer.finish()
    } catch { throw Self.mapWriter(error, capacity) }
    do throws(FDTError) {
      return try FlattenedDeviceTree(bytes: bytes)
    } catch { throw .invalidBlob(error) }
  }

  private static func mapWriter(_ error: FDTError, _ capacity: Int) -> SerializeError {
    error.kind == .noSpace ? .noSpace(capacity: capacity, attempts: 1) : .writer(error)
  }
}
