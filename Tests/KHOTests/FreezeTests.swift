import FDT
import Synchronization
import Testing

@testable import KHO

/// The events one notifier saw, in order.
final class EventLog: Sendable {
  private let events = Mutex<[KHOEvent]>([])
  func record(_ event: KHOEvent) { events.withLock { $0.append(event) } }
  var seen: [KHOEvent] { events.withLock { $0 } }
}

/// DUMP, then FREEZE as late as possible, UNFREEZE on an abort after it.
@Suite struct FreezeTests {
  let scratch: Range<UInt64> = 0x10_0000..<0x20_0000

  private func twoPhase(_ log: EventLog, name: String = "two-phase", refuseFreeze: Bool = false)
    -> KHONotifier
  {
    KHONotifier(
      name: name,
      dump: { writer in
        log.record(.dump)
        try writer.beginNode(name)
        try writer.endNode()
      },
      abort: { log.record(.abort) },
      freeze: {
        log.record(.freeze)
        if refuseFreeze { throw Errno.resourceBusy }
      },
      unfreeze: { log.record(.unfreeze) })
  }

  @Test func freezeRunsAfterDumpAndAbortUnfreezesFirst() throws {
    let kho = KHOOutgoing(scratch: scratch)
    let log = EventLog()
    try kho.register(twoPhase(log))
    try kho.serialize()
    #expect(kho.isActive && !kho.isFrozen)
    try kho.freeze()
    #expect(kho.isActive && kho.isFrozen)
    try kho.freeze()  // once only
    kho.abort()
    #expect(!kho.isActive && !kho.isFrozen)
    #expect(log.seen == [.dump, .freeze, .unfreeze, .abort])
  }

  @Test func abortBeforeFreezeRunsNoUnfreeze() throws {
    let kho = KHOOutgoing(scratch: scratch)
    let log = EventLog()
    try kho.register(twoPhase(log))
    try kho.serialize()
    kho.abort()
    #expect(log.seen == [.dump, .abort])
  }

  @Test func freezeNeedsAnActiveHandover() {
    let kho = KHOOutgoing(scratch: scratch)
    #expect(throws: SerializeError.notActive) { try kho.freeze() }
    #expect(!kho.isFrozen)
  }

  /// A veto unfreezes every notifier (the ones that froze and the one that
  /// refused) and leaves the handover active, to abort or retry.
  @Test func aVetoUnfreezesEveryoneAndStaysActive() throws {
    let kho = KHOOutgoing(scratch: scratch)
    let first = EventLog()
    let refusing = EventLog()
    try kho.register(twoPhase(first, name: "first"))
    try kho.register(twoPhase(refusing, name: "refusing", refuseFreeze: true))
    try kho.serialize()
    #expect(throws: SerializeError.notifier(errno: -Errno.resourceBusy.rawValue)) {
      try kho.freeze()
    }
    #expect(kho.isActive && !kho.isFrozen)
    #expect(first.seen == [.dump, .freeze, .unfreeze])
    #expect(refusing.seen == [.dump, .freeze, .unfreeze])
    kho.abort()
    #expect(first.seen.last == .abort && refusing.seen.last == .abort)
  }

  /// A seed-style subsystem (dump and abort only) sees no new event.
  @Test func aDumpOnlySubsystemIsUnchanged() throws {
    let kho = KHOOutgoing(scratch: scratch)
    let dumps = Mutex(0)
    let aborts = Mutex(0)
    try kho.register(
      KHONotifier(
        name: "seed", dump: { _ in dumps.withLock { $0 += 1 } },
        abort: { aborts.withLock { $0 += 1 } }))
    try kho.serialize()
    try kho.freeze()
    kho.abort()
    #expect(dumps.withLock { $0 } == 1 && aborts.withLock { $0 } == 1)
  }

  /// The mutation gate closes at DUMP, as before: FREEZE changes nothing
  /// for subsystems that use it.
  @Test func withMutationRefusesFromDumpOn() throws {
    let kho = KHOOutgoing(scratch: scratch)
    try kho.serialize()
    #expect(throws: Errno.resourceBusy) { _ = try kho.withMutation { () throws(Never) in 1 } }
    try kho.freeze()
    #expect(throws: Errno.resourceBusy) { _ = try kho.withMutation { () throws(Never) in 1 } }
    kho.abort()
    #expect(try kho.withMutation { () throws(Never) in 1 }.get() == 1)
  }
}
