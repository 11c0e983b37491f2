import FDT
import Synchronization
import Testing

@testable import KHO

#if canImport(Glibc)
  import Glibc
#endif

/// Counts DUMP and ABORT calls of a test notifier.
final class EventCounter: Sendable {
  private let counts = Mutex<(dump: Int, abort: Int)>((0, 0))
  func dumped() { counts.withLock { $0.dump += 1 } }
  func aborted() { counts.withLock { $0.abort += 1 } }
  var dumps: Int { counts.withLock { $0.dump } }
  var aborts: Int { counts.withLock { $0.abort } }
}

@Suite struct OutgoingTests {
  let scratch: Range<UInt64> = 0x10_0000..<0x20_0000

  private func cacheNotifier(_ counter: EventCounter, payload: Int = 8) -> KHONotifier {
    KHONotifier(
      name: "cache",
      dump: { writer in
        counter.dumped()
        try writer.beginNode("cache")
        try writer.property("compatible", string: "example-cache-v1")
        try writer.property("blob", bytes: [UInt8](repeating: 0xab, count: payload))
        try writer.property("mem", native: [UInt64(0x20_0000), 0x1000])
        try writer.endNode()
      }, abort: { counter.aborted() })
  }

  @Test func serializeProducesTheSeedsTree() throws {
    let kho = KHOOutgoing(scratch: scratch)
    let counter = EventCounter()
    try kho.register(cacheNotifier(counter))
    #expect(!kho.isActive)
    #expect(kho.dt == nil)
    try kho.serialize()
    #expect(kho.isActive)
    let dt = try #require(kho.dt)
    #expect(dt.root.property("compatible")?.string == "kho-v1")
    #expect(dt.reservations.isEmpty)
    let cache = try #require(dt.node(atPath: "/cache"))
    #expect(cache.property("compatible")?.string == "example-cache-v1")
    #expect(cache.property("mem")?.native(UInt64.self) == [0x20_0000, 0x1000])
    #expect(Int(dt.header.totalSize) == dt.bytes.count)
    #expect(counter.dumps == 1 && counter.aborts == 0)

    // Byte-identical to the seed's sequence done by hand with libfdt's layout.
    var writer = FDTWriter(layout: .libfdt, capacity: Int(KHOOutgoing.defaultDTMax))
    try writer.beginNode("")
    try writer.property("compatible", string: "kho-v1")
    try writer.beginNode("cache")
    try writer.property("compatible", string: "example-cache-v1")
    try writer.property("blob", bytes: [UInt8](repeating: 0xab, count: 8))
    try writer.property("mem", native: [UInt64(0x20_0000), 0x1000])
    try writer.endNode()
    try writer.endNode()
    #expect(try writer.finish() == dt.bytes)

    #expect(throws: SerializeError.alreadyActive) { try kho.serialize() }
    kho.abort()
    #expect(!kho.isActive)
    #expect(kho.dt == nil)
    #expect(counter.aborts == 1)
  }

  @Test func emptyChainGivesRootOnly() throws {
    let kho = KHOOutgoing(scratch: scratch)
    try kho.serialize()
    let dt = try #require(kho.dt)
    #expect(dt.nodeCount == 1)
    #expect(dt.propertyCount == 1)
  }

  @Test func dumpFailureRunsAbortAndStaysInactive() throws {
    let kho = KHOOutgoing(scratch: scratch)
    let good = EventCounter()
    let bad = EventCounter()
    try kho.register(cacheNotifier(good))
    try kho.register(
      KHONotifier(
        name: "failing", priority: -1,
        dump: { _ in
          bad.dumped()
          throw Errno.noMemory
        }, abort: { bad.aborted() }))
    #expect(throws: SerializeError.notifier(errno: -12)) { try kho.serialize() }
    #expect(!kho.isActive)
    #expect(kho.dt == nil)
    #expect(good.dumps == 1 && good.aborts == 1)
    #expect(bad.dumps == 1 && bad.aborts == 1)
    // Abort while inactive calls nobody.
    kho.abort()
    #expect(good.aborts == 1)
  }

  @Test func notifierLeavingANodeOpenIsAWriterError() throws {
    let kho = KHOOutgoing(scratch: scratch)
    try kho.register(KHONotifier(name: "sloppy", dump: { try $0.beginNode("open") }))
    do {
      try kho.serialize()
      Issue.record("serialize succeeded")
    } catch {
      guard case .writer(let e) = error else {
        Issue.record("unexpected \(error)")
        return
      }
      #expect(e.kind == .badState)
    }
    #expect(!kho.isActive)
  }

  @Test func noSpaceGrowsAndRetries() throws {
    let kho = KHOOutgoing(scratch: scratch, dtMax: 4096)
    let counter = EventCounter()
    try kho.register(cacheNotifier(counter, payload: 20000))
    try kho.serialize()
    #expect(kho.isActive)
    let dt = try #require(kho.dt)
    #expect(dt.node(atPath: "/cache")?.property("blob")?.value.count == 20000)
    // 4K → 8K → 16K → 32K: four DUMPs, three ABORTs between them.
    #expect(counter.dumps == 4)
    #expect(counter.aborts == 3)
    #expect(kho.dtMax == 4096)
  }

  @Test func smallDTMaxGrowsToAtLeastAPage() throws {
    let kho = KHOOutgoing(scratch: scratch, dtMax: 64)
    let counter = EventCounter()
    try kho.register(cacheNotifier(counter))
    try kho.serialize()
    // 64 bytes cannot even hold the root: the first try fails before DUMP.
    #expect(counter.dumps == 1)
    #expect(counter.aborts == 1)
    #expect(kho.dt != nil)
  }

  @Test func zeroDTMaxStillGrows() throws {
    let kho = KHOOutgoing(scratch: scratch, dtMax: 0)
    try kho.serialize()
    #expect(kho.dt != nil)
  }

  @Test func notifierENOSPCAlsoGrows() throws {
    let kho = KHOOutgoing(scratch: scratch, dtMax: 1024)
    let counter = EventCounter()
    try kho.register(
      KHONotifier(name: "picky") { writer in
        counter.dumped()
        // Wants at least 8 KiB of room, and says so with -ENOSPC.
        if writer.capacity ?? 0 < 8192 { throw Errno.noSpace }
      })
    try kho.serialize()
    #expect(counter.dumps == 3)  // 1K, then at least 4K, then 8K
  }

  @Test func givesUpAfterTheAttemptLimit() throws {
    let kho = KHOOutgoing(scratch: scratch, dtMax: 4096)
    let counter = EventCounter()
    try kho.register(
      KHONotifier(
        name: "bottomless",
        dump: { _ in
          counter.dumped()
          throw Errno.noSpace
        }, abort: { counter.aborted() }))
    #expect(throws: SerializeError.noSpace(capacity: 4096 << 7, attempts: 8)) {
      try kho.serialize()
    }
    #expect(counter.dumps == KHOOutgoing.maxAttempts)
    #expect(counter.aborts == KHOOutgoing.maxAttempts)
    #expect(!kho.isActive)
    #expect(kho.dt == nil)
  }

  @Test func dtMaxIsBusyWhileActive() throws {
    let kho = KHOOutgoing(scratch: scratch)
    try kho.setDTMax(0x1000)
    #expect(kho.dtMax == 0x1000)
    try kho.serialize()
    #expect(throws: Errno.resourceBusy) { try kho.setDTMax(0x2000) }
    #expect(kho.dtMax == 0x1000)
    kho.abort()
    try kho.setDTMax(0x2000)
    #expect(kho.dtMax == 0x2000)
  }

  @Test func mutationsAreRefusedWhileActive() throws {
    let kho = KHOOutgoing(scratch: scratch)
    let seenActive = Mutex<Bool?>(nil)
    let refused = Mutex<Bool>(false)
    try kho.register(
      KHONotifier(name: "observer") { _ in
        seenActive.withLock { $0 = kho.isActive }
        do throws(Errno) {
          _ = try kho.withMutation { 1 }
        } catch {
          refused.withLock { $0 = error == .resourceBusy }
        }
      })
    #expect(try kho.withMutation { 42 }.get() == 42)
    try kho.serialize()
    #expect(seenActive.withLock { $0 } == true)
    #expect(refused.withLock { $0 })
    #expect(throws: Errno.resourceBusy) { _ = try kho.withMutation { 1 } }
    kho.abort()
    #expect(try kho.withMutation { 7 }.get() == 7)
  }

  @Test func serializeWaitsForMutationsInFlight() async throws {
    let kho = KHOOutgoing(scratch: scratch)
    let order = CallLog()
    try kho.register(KHONotifier(name: "dump") { _ in order.append("dump") })
    let entered = Atomic<Bool>(false)
    let mutation = Task.detached {
      _ = try? kho.withMutation {
        entered.store(true, ordering: .releasing)
        usleep(100_000)
        order.append("mutation done")
      }
    }
    while !entered.load(ordering: .acquiring) { await Task.yield() }
    try kho.serialize()
    await mutation.value
    #expect(order.all == ["mutation done", "dump"])
  }
}
