// The kernel's notifier chains (kernel/notifier.c, include/linux/notifier.h):
// result codes, errno encoding, priority order, a blocking chain.

import FDT
import KHOSystem
import Synchronization

/// A notifier's result, the kernel's `NOTIFY_*` codes.
///
/// The low bits carry `NOTIFY_DONE`/`NOTIFY_OK` or an encoded errno; the
/// ``stopMask`` bit stops the chain.
public struct NotifierResult: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
  public let rawValue: Int32
  public init(rawValue: Int32) { self.rawValue = rawValue }

  /// `NOTIFY_DONE` (0): don't care.
  public static let done = NotifierResult(rawValue: 0x0000)
  /// `NOTIFY_OK` (1): suits me.
  public static let ok = NotifierResult(rawValue: 0x0001)
  /// `NOTIFY_STOP_MASK` (0x8000): don't call further.
  public static let stopMask = NotifierResult(rawValue: 0x8000)
  /// `NOTIFY_BAD` (`NOTIFY_STOP_MASK | 0x0002`): bad, veto the action.
  public static let bad = NotifierResult(rawValue: 0x8002)
  /// `NOTIFY_STOP` (`NOTIFY_OK | NOTIFY_STOP_MASK`): clean way to stop.
  public static let stop = NotifierResult(rawValue: 0x8001)

  /// The kernel's `notifier_from_errno(err)`: `err` (negative, as kernel
  /// functions return it) encoded with the stop bit, or ``ok`` for 0.
  ///
  /// ```swift
  /// NotifierResult(errno: -12).rawValue  // 0x800d
  /// ```
  public init(errno err: Int32) {
    rawValue = err != 0 ? (Self.stopMask.rawValue | (Self.ok.rawValue &- err)) : Self.ok.rawValue
  }

  /// The kernel's `notifier_to_errno(ret)`: the negative errno encoded by
  /// ``init(errno:)``, or 0 for a result that carries none.
  public var errno: Int32 {
    let ret = rawValue & ~Self.stopMask.rawValue
    return ret > Self.ok.rawValue ? Self.ok.rawValue &- ret : 0
  }

  /// Whether the chain stops after this result.
  public var stopsChain: Bool { rawValue & Self.stopMask.rawValue != 0 }

  public var description: String { "0x\(String(UInt32(bitPattern: rawValue), radix: 16))" }
}

/// Why a notifier could not be registered or unregistered.
public enum NotifierError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The notifier is already on the chain (the kernel's `-EEXIST`).
  case alreadyRegistered(String)
  /// The notifier is not on the chain (the kernel's `-ENOENT`).
  case notRegistered(String)

  /// The errno the kernel returns for it, positive.
  public var errno: Errno {
    switch self {
    case .alreadyRegistered: return .fileExists
    case .notRegistered: return .noSuchFile
    }
  }

  public var description: String {
    switch self {
    case .alreadyRegistered(let name): return "notifier \(name) is already registered"
    case .notRegistered(let name): return "notifier \(name) is not registered"
    }
  }
}

/// One entry of a chain, the kernel's `struct notifier_block`. Its identity
/// is the object: the same block cannot be registered twice.
public final class NotifierBlock<Action: Sendable, Data>: Sendable {
  /// The callback: the action, the chain's data (in-out), and the result.
  public typealias Callback = @Sendable (Action, inout Data) -> NotifierResult

  /// Higher priorities are called first.
  public let priority: Int32
  /// A name for errors and logs.
  public let name: String
  let callback: Callback

  /// Creates a block.
  ///
  /// - Parameters:
  ///   - name: a name for errors and logs.
  ///   - priority: the place in the chain; higher first, equal ones in
  ///     registration order.
  ///   - callback: what to call.
  public init(name: String, priority: Int32 = 0, _ callback: @escaping Callback) {
    self.name = name
    self.priority = priority
    self.callback = callback
  }
}

/// A blocking notifier chain (`struct blocking_notifier_head`): blocks in
/// priority order, called one after another on the caller's thread.
///
/// Unlike the kernel, the chain is not locked while it is called: a call
/// works on a snapshot, so a callback may register or unregister without
/// deadlocking; a block unregistered during a call may still be called by
/// that call.
public final class NotifierChain<Action: Sendable, Data>: Sendable {
  private let blocks = Mutex<[NotifierBlock<Action, Data>]>([])

  /// Creates an empty chain.
  public init() {}

  /// Adds a block after every block of higher or equal priority, as
  /// `notifier_chain_register` does.
  ///
  /// - Throws: ``NotifierError/alreadyRegistered(_:)`` if it is on the chain.
  public func register(_ block: NotifierBlock<Action, Data>) throws(NotifierError) {
    let inserted = blocks.withLock { list -> Bool in
      if list.contains(where: { $0 === block }) { return false }
      let index = list.firstIndex { block.priority > $0.priority } ?? list.endIndex
      list.insert(block, at: index)
      return true
    }
    if !inserted { throw .alreadyRegistered(block.name) }
  }

  /// Removes a block.
  ///
  /// - Throws: ``NotifierError/notRegistered(_:)`` if it is not on the chain.
  public func unregister(_ block: NotifierBlock<Action, Data>) throws(NotifierError) {
    let removed = blocks.withLock { list -> Bool in
      guard let index = list.firstIndex(where: { $0 === block }) else { return false }
      list.remove(at: index)
      return true
    }
    if !removed { throw .notRegistered(block.name) }
  }

  /// The registered blocks' names, in calling order.
  public var names: [String] { blocks.withLock { $0.map(\.name) } }

  /// Calls every block in order until one returns a result with the stop
  /// bit (`blocking_notifier_call_chain`).
  ///
  /// - Returns: the last result, ``NotifierResult/done`` for an empty chain.
  @discardableResult
  public func call(_ action: Action, _ data: inout Data) -> NotifierResult {
    let snapshot = blocks.withLock { $0 }
    var result = NotifierResult.done
    for block in snapshot {
      result = block.callback(action, &data)
      if result.stopsChain { break }
    }
    return result
  }
}

/// The seed's `enum kho_event`, with the two phases of mainline's Live
/// Update Orchestrator added after it.
///
/// A handover goes inactive → active (DUMP ran) → frozen (FREEZE ran) →
/// handed over, or back to inactive on abort (UNFREEZE first if frozen,
/// then ABORT). DUMP describes a subsystem's state (its node and `mem`
/// ranges); the state may go on changing after it, as long as the
/// description stays true. FREEZE runs as late as possible, right before the
/// exec or the commit: after it the state is immutable. A subsystem that
/// freezes inside DUMP (the seed's model) ignores FREEZE and UNFREEZE and
/// keeps working unchanged. See ``KHOOutgoing`` for who may change what in
/// each state.
public enum KHOEvent: Int32, Sendable, Hashable {
  /// `KEXEC_KHO_DUMP`: add your node and `mem` ranges to the writer. The
  /// ranges and the node stay fixed from now on; the bytes in the ranges
  /// may change until FREEZE.
  case dump = 0
  /// `KEXEC_KHO_ABORT`: the handover was cancelled (or a serialize failed);
  /// you may change your state again.
  case abort = 1
  /// The last moment before the next image takes over (LUO's `freeze`):
  /// finish what is in flight and stop changing the preserved state. A
  /// failure vetoes the handover: UNFREEZE, then ABORT, run.
  case freeze = 2
  /// FREEZE is undone (LUO's `unfreeze`): the handover aborted after it.
  /// ABORT follows.
  case unfreeze = 3
}

/// A KHO notifier: ``KHOEvent`` and, for ``KHOEvent/dump``, the writer
/// (`nil` for the other events, as the kernel passes `NULL`).
public typealias KHONotifier = NotifierBlock<KHOEvent, FDTWriter?>

extension NotifierBlock where Action == KHOEvent, Data == FDTWriter? {
  /// A KHO notifier from closures, the usual shape of a subsystem.
  ///
  /// `freeze` and `unfreeze` default to nothing: a subsystem that stops
  /// changing its state in `dump` needs neither.
  ///
  /// An error thrown by `dump` or `freeze` becomes the chain's result: an
  /// `FDTError.Kind.noSpace` as `-ENOSPC` (the outgoing side then grows
  /// the buffer and retries), a `Errno` as itself, anything else as
  /// `-EINVAL`.
  ///
  /// ```swift
  /// let notifier = KHONotifier(name: "cache", priority: 0, dump: { writer in
  ///   try writer.beginNode("cache")
  ///   try writer.property("compatible", string: "example-cache-v1")
  ///   try writer.property("mem", native: [UInt64(0x200000), 0x400000])
  ///   try writer.endNode()
  /// }, abort: {})
  /// try outgoing.register(notifier)
  /// ```
  public convenience init(
    name: String, priority: Int32 = 0,
    dump: @escaping @Sendable (inout FDTWriter) throws -> Void,
    abort: @escaping @Sendable () -> Void = {},
    freeze: @escaping @Sendable () throws -> Void = {},
    unfreeze: @escaping @Sendable () -> Void = {}
  ) {
    self.init(name: name, priority: priority) { event, writer in
      switch event {
      case .abort:
        abort()
        return .done
      case .unfreeze:
        unfreeze()
        return .done
      case .freeze:
        do {
          try freeze()
          return .ok
        } catch {
          return NotifierResult(errno: -Self.errno(for: error).rawValue)
        }
      case .dump:
        guard writer != nil else {
          return NotifierResult(errno: -Errno.invalidArgument.rawValue)
        }
        do {
          try dump(&writer!)
          return .ok
        } catch {
          return NotifierResult(errno: -Self.errno(for: error).rawValue)
        }
      }
    }
  }

  private static func errno(for error: any Error) -> Errno {
    if let fdt = error as? FDTError { return fdt.kind == .noSpace ? .noSpace : .invalidArgument }
    if let errno = error as? Errno { return errno }
    // A failed system call (a memfd for the records, say) says why.
    if let system = error as? SystemCallError { return system.errno }
    return .invalidArgument
  }
}
