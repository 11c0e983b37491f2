import KHOCacheStore
import KHOSystem
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// What one connection hands to the next image: the bytes it read and has
/// not consumed, the replies it has not handed to the socket, and where it
/// was in the protocol (a storage command waiting for its data block, a
/// data block being swallowed, a multi-get answered part way).
public struct ConnectionSnapshot: Sendable, Equatable {
  /// Received bytes not consumed (the rest of a data block included).
  public var input: [UInt8] = []
  /// Replies not yet handed to the socket, written first by the next image.
  public var output: [UInt8] = []
  /// Bytes of a refused data block still to throw away.
  public var swallow: Int = 0
  /// The key index a multi-get at the head of `input` goes on from.
  public var retrieveResumeIndex: Int?
  /// A storage command whose data block is still arriving.
  var pending: PendingStore?
  /// The peer's address (`sockaddr` bytes): the next image checks that the
  /// descriptor it received is still this connection.
  public var peer: [UInt8] = []

  /// An empty snapshot (no input, no replies, no peer).
  public init() {}
}

extension PendingStore: Equatable {
  static func == (a: PendingStore, b: PendingStore) -> Bool {
    a.mode == b.mode && a.key == b.key && a.flags == b.flags && a.exptime == b.exptime
      && a.length == b.length && a.noreply == b.noreply
  }
}

/// Every admitted connection of a server, by event loop, so that a
/// handover can freeze them all, take their snapshots, and thaw them on
/// rollback.
public final class ConnectionRegistry: Sendable {
  /// One loop's connections, touched only on that loop: 10,000 adoptions
  /// on four loops contended for one lock (and its dictionary's resizes).
  final class Shard: Sendable {
    let eventLoop: any EventLoop
    let connections: NIOLoopBoundBox<[ObjectIdentifier: (MemcacheHandler, ChannelHandlerContext)]>
    /// What `stats conns` shows of them, readable from any loop (the lock
    /// is this loop's own, so uncontended but for `stats conns`).
    let statuses = Mutex<[ObjectIdentifier: ConnectionStatus]>([:])

    init(_ eventLoop: any EventLoop) {
      self.eventLoop = eventLoop
      self.connections = NIOLoopBoundBox([:], eventLoop: eventLoop)
    }
  }
  /// The shards by loop; a shard is made once, on its loop's first connection.
  private let shards = Mutex<[ObjectIdentifier: Shard]>([:])
  private let registered = Atomic<Int>(0)
  /// The freeze under way, if any: UNFREEZE and ABORT thaw it.
  private let current = Mutex<HandoverFreeze?>(nil)

  init() {}

  /// Called on `context`'s loop.
  func add(_ handler: MemcacheHandler, _ context: ChannelHandlerContext, _ status: ConnectionStatus)
  {
    let loop = context.eventLoop
    let shard = shards.withLock { shards in
      if let shard = shards[ObjectIdentifier(loop)] { return shard }
      let shard = Shard(loop)
      shards[ObjectIdentifier(loop)] = shard
      return shard
    }
    handler.registryShard = shard
    shard.connections.value[ObjectIdentifier(handler)] = (handler, context)
    shard.statuses.withLock { $0[ObjectIdentifier(handler)] = status }
    registered.wrappingAdd(1, ordering: .relaxed)
  }

  /// Called on the handler's loop.
  func remove(_ handler: MemcacheHandler) {
    guard let shard = handler.registryShard else { return }
    handler.registryShard = nil
    if shard.connections.value.removeValue(forKey: ObjectIdentifier(handler)) != nil {
      registered.wrappingSubtract(1, ordering: .relaxed)
    }
    _ = shard.statuses.withLock { $0.removeValue(forKey: ObjectIdentifier(handler)) }
  }

  /// Every registered connection's status, for `stats conns`.
  func statuses() -> [ConnectionStatus] {
    shards.withLock { Array($0.values) }.flatMap { shard in
      shard.statuses.withLock { Array($0.values) }
    }
  }

  /// Connections registered now.
  public var count: Int { registered.load(ordering: .relaxed) }

  /// Freezes every connection and parks every event loop that has one,
  /// and returns the connections' records and descriptors, the busy ones
  /// first, the most recent first (the next image takes them up in this
  /// order).
  ///
  /// Each loop stops running commands at once, waits until its
  /// connections have handed the replies already queued to their sockets
  /// (a connection still holding some after `drainTimeout` is closed,
  /// never handed over half-written), takes their snapshots, and then
  /// blocks until ``unfreezeAll()``, or for good: after a commit this
  /// process exits or executes the next image with its loops parked. So
  /// nothing is read from any socket after its snapshot, by construction
  /// and without one system call per connection; that is what makes the
  /// freeze of 10,000 idle connections cost microseconds each.
  ///
  /// The descriptors stay the channels' (no duplicate: 10,000 connections
  /// would need 20,000 descriptors); the next image checks each against
  /// the snapshot's peer address.
  ///
  /// Call it off the event loops (it blocks until they have parked).
  /// - Throws: `FreezeTimeout` when a loop did not park in time (the
  ///   caller aborts, and ``unfreezeAll()`` thaws those that did).
  public func freezeAll(drainTimeout: TimeAmount) throws -> FrozenConnections {
    let loops = shards.withLock { $0.values.map { $0 } }
    guard !loops.isEmpty else { return FrozenConnections([]) }
    // Descriptors by peer, found before anything stops: the scan costs a
    // system call per descriptor, and clients are still served during it.
    let table = SocketTable.scan()
    // Each loop lists its connections, and each takes its descriptor from
    // the table, while it is still served: the freeze itself then makes no
    // system call for it. (Accepting stopped before the handover began; a
    // connection accepted just before is registered by a task queued on
    // its loop before this one.)
    let prepared = loops.map { shard in
      let loop = shard.eventLoop
      return loop.submit {
        let mine = Array(shard.connections.value.values)
        for (handler, context) in mine {
          handler.handoverDescriptor = context.channel.remoteAddress.flatMap {
            table.descriptor(peer: $0)
          }
        }
        return NIOLoopBound(mine, eventLoop: loop)
      }
    }
    // Every loop prepared (and served in between) before any freezes: the
    // freeze is as short as its slowest loop's snapshots, not its scan.
    let lists = prepared.map { try? $0.wait() }
    let freeze = HandoverFreeze(loops: loops.count)
    current.withLock { $0 = freeze }
    for (shard, listed) in zip(loops, lists) {
      let loop = shard.eventLoop
      loop.execute {
        LoopFreeze(
          loop: loop, connections: listed?.value ?? [], freeze: freeze,
          drainTimeout: drainTimeout
        ).start()
      }
    }
    let waitLimit = drainTimeout + .seconds(5)
    guard let reports = freeze.awaitParked(timeout: waitLimit) else {
      throw FreezeTimeout(loops: loops.count, after: waitLimit)
    }
    return FrozenConnections(reports)
  }

  /// Rollback: every loop leaves its park and every connection reads and
  /// runs commands again.
  public func unfreezeAll() {
    let freeze = current.withLock { current in
      defer { current = nil }
      return current
    }
    freeze?.thaw()
  }
}

/// The frozen connections, ready to hand over: the records' blob (see
/// ``ConnectionRecords``) and each record's descriptor, in the same order.
public struct FrozenConnections: Sendable {
  /// The records, `ConnectionRecords`' format.
  public var records: [UInt8]
  /// The descriptor of each record, in the records' order.
  public var descriptors: [KHOSystem.FileDescriptor]

  /// Busy connections (sorted across loops, the most recent first), then
  /// the others as each loop encoded them.
  init(_ reports: [HandoverFreeze.LoopReport]) {
    let busy = reports.flatMap(\.busy).sorted { $0.recency > $1.recency }
    var busyRecords: [UInt8] = []
    for taken in busy { ConnectionRecords.encode(taken.snapshot, into: &busyRecords) }
    descriptors = busy.map(\.descriptor) + reports.flatMap(\.idleDescriptors)
    records = ConnectionRecords.assemble(
      count: descriptors.count, records: [busyRecords] + reports.map(\.idleRecords))
  }
}

/// A loop did not park within the freeze's limit.
public struct FreezeTimeout: Error, CustomStringConvertible {
  /// The loops asked to park.
  public var loops: Int
  /// How long the freeze waited.
  public var after: TimeAmount

  /// What the freeze waited for, and how long.
  public var description: String {
    "the event loops did not all park within \(after.nanoseconds / 1_000_000) ms (of \(loops))"
  }
}

/// One handover's freeze, shared by the server's event loops: each reports
/// its snapshots, then waits (parked) until the handover is aborted.
final class HandoverFreeze: Sendable {
  struct Taken: Sendable {
    var snapshot: ConnectionSnapshot
    var descriptor: KHOSystem.FileDescriptor
    /// When the connection last read (nanoseconds of uptime): busy
    /// clients are taken up first by the next image.
    var recency: UInt64
  }

  /// What one loop hands over: its busy connections as snapshots (sorted
  /// with the other loops' by the caller), the others already encoded.
  struct LoopReport: Sendable {
    var busy: [Taken] = []
    var idleRecords: [UInt8] = []
    var idleDescriptors: [KHOSystem.FileDescriptor] = []
  }

  private struct Reports {
    var parked = 0
    var reports: [LoopReport] = []
  }

  private let loops: Int
  /// `true` once all loops have reported.
  private let reports = ConditionLock(value: false)
  private nonisolated(unsafe) var gathered = Reports()
  /// `true` once thawed; parked loops wait for it.
  private let gate = ConditionLock(value: false)

  init(loops: Int) { self.loops = loops }

  /// A loop's snapshots (under `reports`' lock).
  func report(_ report: LoopReport) {
    reports.lock()
    gathered.parked += 1
    gathered.reports.append(report)
    reports.unlock(withValue: gathered.parked == loops)
  }

  /// Every loop's report, once all have parked; nil after `timeout`.
  func awaitParked(timeout: TimeAmount) -> [LoopReport]? {
    guard reports.lock(whenValue: true, timeoutSeconds: Double(timeout.nanoseconds) / 1e9) else {
      return nil
    }
    defer { reports.unlock() }
    return gathered.reports
  }

  /// A connection that read this recently (uptime nanoseconds) is busy:
  /// its client is likely to send again during the handover, and the next
  /// image takes it up first.
  let busySince = NIODeadline.now().uptimeNanoseconds &- 10_000_000_000

  var isThawed: Bool { gate.value }

  /// Blocks the calling loop until ``thaw()`` (at once if it ran already).
  func awaitThaw() {
    gate.lock(whenValue: true)
    gate.unlock()
  }

  func thaw() {
    gate.lock()
    gate.unlock(withValue: true)
  }
}

/// The freeze on one event loop; used only on that loop.
final class LoopFreeze {
  let loop: any EventLoop
  let connections: [(MemcacheHandler, ChannelHandlerContext)]
  let freeze: HandoverFreeze
  let drainTimeout: TimeAmount
  private var undrained = 0
  private var parked = false
  private var timeout: Scheduled<Void>?

  init(
    loop: any EventLoop, connections: [(MemcacheHandler, ChannelHandlerContext)],
    freeze: HandoverFreeze, drainTimeout: TimeAmount
  ) {
    self.loop = loop
    self.connections = connections
    self.freeze = freeze
    self.drainTimeout = drainTimeout
  }

  /// Stops every connection; parks once their queued replies are written.
  func start() {
    for (handler, _) in connections where handler.beginHandoverFreeze(self) {
      undrained += 1
    }
    guard undrained > 0 else { return park() }
    timeout = loop.assumeIsolated().scheduleTask(in: drainTimeout) {
      self.timeout = nil
      if !self.freeze.isThawed {
        for (handler, context) in self.connections { handler.dropIfUndrained(context) }
      }
      self.park()
    }
  }

  /// A connection has no reply left in its channel (or closed).
  func drained() {
    undrained -= 1
    guard undrained == 0 && !parked else { return }
    // Parked from a task of its own, not from inside the write's callback.
    loop.assumeIsolated().execute { self.park() }
  }

  /// Takes the snapshots, reports them, and blocks this loop until a
  /// rollback thaws it (after a commit, until the process ends).
  private func park() {
    guard !parked else { return }
    parked = true
    HandoverTrace.stamp("old: loop parks \(connections.count) connections")
    timeout?.cancel()
    var rescanned: SocketTable?
    var report = HandoverFreeze.LoopReport()
    for (handler, context) in connections where handler.isReadyForHandover {
      // Found before the freeze (the channel is open, so the descriptor is
      // still its own); else accepted after the scan: look once more.
      guard
        let (fd, peerBytes) = handler.handoverDescriptor
          ?? context.channel.remoteAddress.flatMap({ peer in
            if rescanned == nil { rescanned = SocketTable.scan() }
            return rescanned!.descriptor(peer: peer)
          })
      else { continue }
      var snapshot = handler.takeSnapshot()
      snapshot.peer = peerBytes
      if handler.lastRead >= freeze.busySince {
        report.busy.append(.init(snapshot: snapshot, descriptor: fd, recency: handler.lastRead))
      } else {
        ConnectionRecords.encode(snapshot, into: &report.idleRecords)
        report.idleDescriptors.append(fd)
      }
    }
    freeze.report(report)
    // The freeze itself: see ConnectionRegistry.freezeAll.
    freeze.awaitThaw()
    for (handler, context) in connections { handler.unfreezeAfterHandover(context) }
  }
}

/// The process's connected TCP sockets by peer address: NIO does not give
/// a channel's descriptor, so a handover finds it by the peer address the
/// channel knows (unique among one listener's connections) and checks it.
struct SocketTable: Sendable {
  var byPeer: [[UInt8]: Int32] = [:]

  static func scan() -> SocketTable {
    var table = SocketTable()
    for fd in openDescriptors() where fd > 2 {
      if let peer = try? KHOSystem.FileDescriptor(rawValue: fd).peerAddress() {
        table.byPeer[peer] = fd
      }
    }
    return table
  }

  /// The descriptor of the connection to `peer`, checked (it is still
  /// that connection), with the peer's `sockaddr` bytes.
  func descriptor(peer: SocketAddress) -> (KHOSystem.FileDescriptor, [UInt8])? {
    let key = peer.withSockAddr { pointer, length in
      Array(UnsafeRawBufferPointer(start: pointer, count: length))
    }
    guard let fd = byPeer[key] ?? byPeer.first(where: { $0.key.starts(with: key) })?.value else {
      return nil
    }
    let descriptor = KHOSystem.FileDescriptor(rawValue: fd)
    guard let now = try? descriptor.peerAddress(), now.starts(with: key) || key.starts(with: now)
    else { return nil }
    return (descriptor, now)
  }
}

// MARK: The handler's side

extension MemcacheHandler {
  /// Stops running commands (reads already under way are kept in `input`;
  /// no new one is asked for). Returns whether replies are still in the
  /// channel: `freeze` is then told when they are written.
  func beginHandoverFreeze(_ freeze: LoopFreeze) -> Bool {
    frozenForHandover = true
    guard !closing, unsentBytes > 0 else { return false }
    drainWaiter = freeze
    return true
  }

  /// Tells the freeze waiting for this connection's replies, once.
  func notifyDrainWaiter() {
    guard unsentBytes == 0 || closing, let waiter = drainWaiter else { return }
    drainWaiter = nil
    waiter.drained()
  }

  /// After the drain timeout: a connection whose replies are still in
  /// its channel is closed (they cannot be handed over whole).
  func dropIfUndrained(_ context: ChannelHandlerContext) {
    guard drainWaiter != nil else { return }
    drainWaiter = nil
    closing = true
    context.close(promise: nil)
  }

  /// Whether the connection can be handed over: it is not closing, and
  /// holds no reply in its channel.
  var isReadyForHandover: Bool { !closing && unsentBytes == 0 && drainWaiter == nil }

  func takeSnapshot() -> ConnectionSnapshot {
    var snapshot = ConnectionSnapshot()
    if let input, input.readableBytes > 0 { snapshot.input = Array(input.readableBytesView) }
    if output.readableBytes > 0 { snapshot.output = Array(output.readableBytesView) }
    snapshot.swallow = swallow
    snapshot.retrieveResumeIndex = retrieveResumeIndex
    snapshot.pending = pending
    return snapshot
  }

  /// Rollback: go on where the connection stopped.
  func unfreezeAfterHandover(_ context: ChannelHandlerContext) {
    guard frozenForHandover else { return }
    frozenForHandover = false
    drainWaiter = nil
    handoverDescriptor = nil
    resume(context)
  }

  /// In the next image: takes up a connection where the previous image
  /// left it, its replies first.
  func restore(_ snapshot: ConnectionSnapshot, _ context: ChannelHandlerContext) {
    output.writeBytes(snapshot.output)
    if !snapshot.input.isEmpty {
      var buffer = context.channel.allocator.buffer(capacity: snapshot.input.count)
      buffer.writeBytes(snapshot.input)
      input = buffer
    }
    swallow = snapshot.swallow
    retrieveResumeIndex = snapshot.retrieveResumeIndex
    pending = snapshot.pending
    processInput(context)
    flushOutput(context)
  }
}

// MARK: Adoption

/// Takes up, in the next image, the connections the previous one handed
/// over. Nothing is trusted: a descriptor that is not a connected TCP
/// socket, a record that does not parse, or connections beyond `-c` are
/// closed.
public enum ConnectionAdoption {
  /// How many connections a loop takes up before it serves again: the
  /// first (most recently active) are served while the rest are taken up.
  static let chunk = 64

  /// Adopts `snapshots[i]` on `descriptors[i]` into `group`, serving
  /// `context`, in their order (the most recently active first), a few at
  /// a time on each loop, so that the first are served while the rest are
  /// still being taken up. Descriptors not adopted are closed. Returns
  /// how many pass the checks, and a future of how many were adopted.
  ///
  /// The adopted count against `-c` is taken at once, before any new
  /// connection can be accepted: a connection that was there first is
  /// never refused in favour of a new one.
  public static func adopt(
    _ snapshots: [ConnectionSnapshot], descriptors: [KHOSystem.FileDescriptor],
    group: any EventLoopGroup,
    context: CacheServerContext
  ) -> (checked: Int, adopted: EventLoopFuture<Int>) {
    var perLoop:
      [ObjectIdentifier: (any EventLoop, [(ConnectionSnapshot, KHOSystem.FileDescriptor)])] =
        [:]
    var loops: [ObjectIdentifier] = []
    var checked = 0
    for (index, fd) in descriptors.enumerated() {
      // Only counted here; checked by the loop that takes it up, so the
      // first are served before the last are looked at.
      guard index < snapshots.count, context.admit() else {
        fd.closeIgnoringErrors()
        continue
      }
      checked += 1
      let loop = group.next()
      let id = ObjectIdentifier(loop)
      if perLoop[id] == nil { loops.append(id) }
      perLoop[id, default: (loop, [])].1.append((snapshots[index], fd))
    }
    let futures = loops.map { id in
      let (loop, items) = perLoop[id]!
      let done = loop.makePromise(of: Int.self)
      loop.execute { adoptChunk(items[...], adopted: 0, on: loop, context: context, done: done) }
      return done.futureResult
    }
    let all = group.next().makeSucceededFuture(0)
    let adopted = futures.reduce(all) { sum, next in
      sum.and(next).map { $0 + $1 }
    }
    return (checked, adopted)
  }

  /// Adopts the first `chunk` of `items` on `loop`, then queues the rest,
  /// so the loop serves the adopted ones in between.
  private static func adoptChunk(
    _ items: ArraySlice<(ConnectionSnapshot, KHOSystem.FileDescriptor)>, adopted: Int,
    on loop: any EventLoop, context: CacheServerContext, done: EventLoopPromise<Int>
  ) {
    let now = items.prefix(chunk)
    if adopted == 0 { HandoverTrace.stamp("new: a loop adopts its first connections") }
    let each = now.map { snapshot, fd in
      guard fd.isConnectedTCPSocket(), (try? fd.peerAddress()) == snapshot.peer else {
        fd.closeIgnoringErrors()
        context.release()
        return loop.makeFailedFuture(ChannelError.badInterfaceAddressFamily)
          as EventLoopFuture<any Channel>
      }
      let registered = bootstrap(group: loop, context: context, snapshot: snapshot)
        .withConnectedSocket(fd.rawValue)
      // Counted against -c already: a channel that never became active
      // gives its place back (and its descriptor was closed by NIO).
      registered.whenFailure { _ in context.release() }
      return registered as EventLoopFuture<any Channel>
    }
    EventLoopFuture.whenAllComplete(each, on: loop).whenSuccess { results in
      let total = adopted + results.filter { (try? $0.get()) != nil }.count
      let rest = items.dropFirst(chunk)
      if rest.isEmpty { return done.succeed(total) }
      // A timer, not `execute`: NIO runs every queued task before it polls
      // again, so only a (slightly) later deadline lets the loop serve the
      // connections adopted so far in between.
      loop.scheduleTask(in: .microseconds(10)) {
        adoptChunk(rest, adopted: total, on: loop, context: context, done: done)
      }
    }
  }

  /// Takes up one throwaway connection on every loop of `group` (one end
  /// of a socket pair, with a `get` in its snapshot, over a throwaway
  /// store) and reads its reply, so that the first connection the
  /// predecessor hands over does not pay the path's first-use costs: type
  /// metadata, protocol conformance lookups, lazily bound symbols. Measured
  /// on the first adoption of a process: 0.3 ms of a 1 ms pause.
  ///
  /// Call it before `HandoverRuntime.ready()`, while an overlapped
  /// predecessor still serves. Nothing it does is seen by the real store
  /// or counted in its statistics; a failure only leaves the path cold.
  public static func warmUp(group: any EventLoopGroup, configuration: CacheServerConfiguration) {
    let itemSizeMax = 1 << 20
    let size = CacheStore.regionSize(memoryLimit: 1 << 20, itemSizeMax: itemSizeMax)
    let base = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
    defer { base.deallocate() }
    guard
      let store = try? CacheStore.format(
        region: CacheRegion(base: base, size: size), itemSizeMax: itemSizeMax)
    else { return }
    let context = CacheServerContext(store: store, configuration: configuration)
    var snapshot = ConnectionSnapshot()
    snapshot.input = Array("get kho-warm-up\r\n".utf8)
    let end = Array("END\r\n".utf8)
    for loop in group.makeIterator() {
      guard let (ours, theirs) = try? KHOSystem.FileDescriptor.socketPair() else { return }
      defer { ours.closeIgnoringErrors() }
      guard
        let channel = try? bootstrap(group: loop, context: context, snapshot: snapshot)
          .withConnectedSocket(theirs.rawValue).wait()
      else {
        theirs.closeIgnoringErrors()
        continue
      }
      // Bounded: one reply of five bytes, a second at most for it.
      var reply: [UInt8] = []
      while reply.count < end.count, (try? ours.waitReadable(timeoutMilliseconds: 1000)) == true,
        let chunk = try? ours.read(upTo: 64), !chunk.isEmpty
      {
        reply += chunk
      }
      // The channel is done with the store before the region goes.
      try? channel.close().wait()
    }
  }

  static func bootstrap(
    group: any EventLoopGroup, context: CacheServerContext, snapshot: ConnectionSnapshot
  ) -> ClientBootstrap {
    // The same options as an accepted connection's (CacheServer.swift);
    // TCP_NODELAY is the socket's own and came with it.
    ClientBootstrap(group: group)
      .channelOption(.maxMessagesPerRead, value: CacheServer.maxMessagesPerRead)
      .channelOption(.writeBufferWaterMark, value: CacheServer.replyWaterMark(context))
      .channelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          let handler = MemcacheHandler(context: context)
          handler.restored = snapshot
          handler.preAdmitted = true
          try channel.pipeline.syncOperations.addHandler(handler)
        }
      }
  }
}

// MARK: The records' bytes

/// Snapshots as bytes, little-endian: "KHOCONN1", a u64 count, then per
/// connection its fields with u64 lengths. Decoding checks every length
/// against what is left and against the protocol's bounds.
public enum ConnectionRecords {
  static let magic = Array("KHOCONN1".utf8)
  /// The largest input or output one connection may hand over: what the
  /// handler can hold (a get line, or one data block; a flush of replies
  /// plus one value), for the largest item memcached allows (1 GiB).
  static let maxBytesPerField = (1 << 30) + MemcacheHandler.maxGetLine + (4 << 20)

  /// The record of `snapshots` that the next image's `decode` reads.
  public static func encode(_ snapshots: [ConnectionSnapshot]) -> [UInt8] {
    var records: [UInt8] = []
    for snapshot in snapshots { encode(snapshot, into: &records) }
    return assemble(count: snapshots.count, records: [records])
  }

  /// The blob of `count` records, encoded in `records` in order.
  public static func assemble(count: Int, records: [[UInt8]]) -> [UInt8] {
    var bytes = magic
    bytes.reserveCapacity(magic.count + 8 + records.reduce(0) { $0 + $1.count })
    append(UInt64(count), to: &bytes)
    for part in records { bytes += part }
    return bytes
  }

  /// Appends one connection's record to `bytes`.
  public static func encode(_ snapshot: ConnectionSnapshot, into bytes: inout [UInt8]) {
    do {
      append(UInt64(snapshot.swallow), to: &bytes)
      append(UInt64(bitPattern: Int64(snapshot.retrieveResumeIndex ?? -1)), to: &bytes)
      if let pending = snapshot.pending {
        bytes.append(1)
        bytes.append(modeCode(pending.mode))
        append(modeCAS(pending.mode), to: &bytes)
        appendField(pending.key, to: &bytes)
        append(UInt64(pending.flags), to: &bytes)
        append(UInt64(bitPattern: pending.exptime), to: &bytes)
        append(UInt64(pending.length), to: &bytes)
        bytes.append(pending.noreply ? 1 : 0)
      } else {
        bytes.append(0)
      }
      appendField(snapshot.peer, to: &bytes)
      appendField(snapshot.input, to: &bytes)
      appendField(snapshot.output, to: &bytes)
    }
  }

  /// The snapshots in `bytes`, or nil if anything in them is malformed.
  public static func decode(_ bytes: [UInt8], maxCount: Int) -> [ConnectionSnapshot]? {
    var reader = Reader(bytes: bytes)
    guard reader.take(magic.count) == magic, let count = reader.u64(), count <= maxCount else {
      return nil
    }
    var snapshots: [ConnectionSnapshot] = []
    for _ in 0..<count {
      guard let snapshot = decodeOne(&reader) else { return nil }
      snapshots.append(snapshot)
    }
    return reader.atEnd ? snapshots : nil
  }

  private static func decodeOne(_ reader: inout Reader) -> ConnectionSnapshot? {
    var snapshot = ConnectionSnapshot()
    guard let swallow = reader.u64(), swallow <= maxBytesPerField, let resume = reader.u64(),
      let hasPending = reader.u8(), hasPending <= 1
    else { return nil }
    snapshot.swallow = Int(swallow)
    let resumeIndex = Int64(bitPattern: resume)
    guard resumeIndex >= -1 && resumeIndex < 1 << 20 else { return nil }
    snapshot.retrieveResumeIndex = resumeIndex >= 0 ? Int(resumeIndex) : nil
    if hasPending == 1 {
      guard let code = reader.u8(), let cas = reader.u64(), let mode = mode(code, cas),
        let key = reader.field(max: CacheLimits.maxKeyLength), !key.isEmpty,
        let flags = reader.u64(), flags <= UInt32.max, let exptime = reader.u64(),
        let length = reader.u64(), length <= maxBytesPerField, let noreply = reader.u8(),
        noreply <= 1
      else { return nil }
      snapshot.pending = PendingStore(
        mode: mode, key: key, flags: UInt32(flags), exptime: Int64(bitPattern: exptime),
        length: Int(length), noreply: noreply == 1)
    }
    guard let peer = reader.field(max: 128), let input = reader.field(max: maxBytesPerField),
      let output = reader.field(max: maxBytesPerField)
    else { return nil }
    snapshot.peer = peer
    snapshot.input = input
    snapshot.output = output
    return snapshot
  }

  private static func modeCode(_ mode: StoreMode) -> UInt8 {
    switch mode {
    case .set: 0
    case .add: 1
    case .replace: 2
    case .append: 3
    case .prepend: 4
    case .cas: 5
    }
  }

  private static func modeCAS(_ mode: StoreMode) -> UInt64 {
    if case .cas(let unique) = mode { return unique }
    return 0
  }

  private static func mode(_ code: UInt8, _ cas: UInt64) -> StoreMode? {
    switch code {
    case 0: .set
    case 1: .add
    case 2: .replace
    case 3: .append
    case 4: .prepend
    case 5: .cas(cas)
    default: nil
    }
  }

  private static func append(_ value: UInt64, to bytes: inout [UInt8]) {
    withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
  }

  private static func appendField(_ field: [UInt8], to bytes: inout [UInt8]) {
    append(UInt64(field.count), to: &bytes)
    bytes.append(contentsOf: field)
  }

  struct Reader {
    var bytes: [UInt8]
    var offset = 0
    var atEnd: Bool { offset == bytes.count }

    mutating func take(_ count: Int) -> [UInt8]? {
      guard count >= 0, bytes.count - offset >= count else { return nil }
      defer { offset += count }
      return Array(bytes[offset..<offset + count])
    }

    mutating func u8() -> UInt8? {
      guard offset < bytes.count else { return nil }
      defer { offset += 1 }
      return bytes[offset]
    }

    mutating func u64() -> UInt64? {
      guard bytes.count - offset >= 8 else { return nil }
      var value: UInt64 = 0
      for index in (offset..<offset + 8).reversed() { value = value << 8 | UInt64(bytes[index]) }
      offset += 8
      return value
    }

    mutating func field(max: Int) -> [UInt8]? {
      guard let count = u64(), count <= max else { return nil }
      return take(Int(count))
    }
  }
}
