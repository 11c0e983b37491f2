import KHOCacheStore
import KHOSystem
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
  struct Entry: Sendable {
    var eventLoop: any EventLoop
    var connection: NIOLoopBound<(MemcacheHandler, ChannelHandlerContext)>
    /// What `stats conns` shows of it, readable from any loop.
    var status: ConnectionStatus
  }
  private let entries = Mutex<[ObjectIdentifier: Entry]>([:])

  init() {}

  func add(_ handler: MemcacheHandler, _ context: ChannelHandlerContext, _ status: ConnectionStatus)
  {
    let entry = Entry(
      eventLoop: context.eventLoop,
      connection: NIOLoopBound((handler, context), eventLoop: context.eventLoop), status: status)
    entries.withLock { $0[ObjectIdentifier(handler)] = entry }
  }

  func remove(_ handler: MemcacheHandler) {
    _ = entries.withLock { $0.removeValue(forKey: ObjectIdentifier(handler)) }
  }

  /// Every registered connection's status, for `stats conns`.
  func statuses() -> [ConnectionStatus] { entries.withLock { $0.values.map(\.status) } }

  /// Connections registered now.
  public var count: Int { entries.withLock { $0.count } }

  /// Freezes every connection (it stops reading and running commands),
  /// waits until each has handed its queued replies to the socket (or
  /// `drainTimeout` passes: those are closed, never handed over
  /// half-written), and returns each one's snapshot with its descriptor,
  /// in the same order. The descriptors stay the channels' (no duplicate:
  /// 10,000 connections would need 20,000 descriptors); a frozen channel
  /// closes one only if its peer resets it, and the next image checks
  /// each against the snapshot's peer address.
  ///
  /// Call it off the event loops (it blocks until they answer).
  public func freezeAll(drainTimeout: TimeAmount) -> [(
    ConnectionSnapshot, KHOSystem.FileDescriptor
  )] {
    let all = entries.withLock { Array($0.values) }
    guard let first = all.first else { return [] }
    let table = SocketTable.scan()
    // One task per event loop, not per connection: 10,000 cross-thread
    // submissions (each a wakeup) cost more than the freezes themselves.
    let byLoop = Dictionary(grouping: all) { ObjectIdentifier($0.eventLoop) }
    let futures = byLoop.values.map { entries in
      let loop = entries[0].eventLoop
      return loop.flatSubmit {
        let each = entries.map { entry in
          let (handler, context) = entry.connection.value
          return handler.freezeForHandover(context, table: table)
        }
        return EventLoopFuture.whenAllComplete(each, on: loop).map { results in
          results.map { (try? $0.get()) ?? nil }
        }
      }
    }
    let gathered = first.eventLoop.makePromise(
      of: [(ConnectionSnapshot, KHOSystem.FileDescriptor)?].self)
    EventLoopFuture.whenAllComplete(futures, on: first.eventLoop).map { results in
      results.flatMap { (try? $0.get()) ?? [] }
    }.cascade(to: gathered)
    first.eventLoop.scheduleTask(in: drainTimeout) {
      gathered.fail(ChannelError.operationUnsupported)
    }
    if let snapshots = try? gathered.futureResult.wait() {
      return snapshots.compactMap { $0 }
    }
    // Some did not drain in time: close those, keep the others.
    let settled = all.map { entry in
      entry.eventLoop.submit {
        let (handler, context) = entry.connection.value
        return handler.finishOrDropHandover(context)
      }
    }
    return settled.compactMap { try? $0.wait() }
  }

  /// Rollback: every connection reads and runs commands again.
  public func unfreezeAll() {
    let all = entries.withLock { Array($0.values) }
    for entry in all {
      entry.eventLoop.execute {
        let (handler, context) = entry.connection.value
        handler.unfreezeAfterHandover(context)
      }
    }
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
  /// Stops reading and running commands; the snapshot comes once the
  /// replies already handed to the channel are written (they cannot be
  /// taken back from it).
  func freezeForHandover(_ context: ChannelHandlerContext, table: SocketTable)
    -> EventLoopFuture<(ConnectionSnapshot, KHOSystem.FileDescriptor)?>
  {
    frozenForHandover = true
    context.channel.setOption(ChannelOptions.autoRead, value: false).whenFailure { _ in }
    guard !closing, let peer = context.channel.remoteAddress,
      let (fd, _) = table.descriptor(peer: peer)
    else { return context.eventLoop.makeSucceededFuture(nil) }
    let promise = context.eventLoop.makePromise(
      of: (ConnectionSnapshot, KHOSystem.FileDescriptor)?.self)
    handoverWaiter = (promise, fd)
    snapshotIfDrained()
    return promise.futureResult
  }

  /// Completes the freeze once no reply is in the channel.
  func snapshotIfDrained() {
    guard unsentBytes == 0, let (promise, fd) = handoverWaiter else { return }
    handoverWaiter = nil
    var snapshot = takeSnapshot()
    snapshot.peer = (try? fd.peerAddress()) ?? []
    promise.succeed(snapshot.peer.isEmpty ? nil : (snapshot, fd))
  }

  /// After the drain timeout: the snapshot if it is complete, else the
  /// connection is closed (its replies cannot be handed over whole).
  func finishOrDropHandover(_ context: ChannelHandlerContext) -> (
    ConnectionSnapshot, KHOSystem.FileDescriptor
  )? {
    guard let (promise, fd) = handoverWaiter else { return nil }
    handoverWaiter = nil
    _ = fd  // the channel's own: closing the channel closes it
    promise.succeed(nil)
    closing = true
    context.close(promise: nil)
    return nil
  }

  func takeSnapshot() -> ConnectionSnapshot {
    var snapshot = ConnectionSnapshot()
    snapshot.input = input.map { Array($0.readableBytesView) } ?? []
    snapshot.output = Array(output.readableBytesView)
    snapshot.swallow = swallow
    snapshot.retrieveResumeIndex = retrieveResumeIndex
    snapshot.pending = pending
    return snapshot
  }

  /// Rollback: go on where the connection stopped.
  func unfreezeAfterHandover(_ context: ChannelHandlerContext) {
    guard frozenForHandover else { return }
    frozenForHandover = false
    if let (promise, _) = handoverWaiter {
      handoverWaiter = nil
      promise.succeed(nil)
    }
    context.channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in }
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
  /// Adopts `snapshots[i]` on `descriptors[i]` into `group`, serving
  /// `context`; returns how many were adopted. Descriptors not adopted are
  /// closed.
  public static func adopt(
    _ snapshots: [ConnectionSnapshot], descriptors: [KHOSystem.FileDescriptor],
    group: any EventLoopGroup,
    context: CacheServerContext
  ) -> Int {
    var perLoop:
      [ObjectIdentifier: (any EventLoop, [(ConnectionSnapshot, KHOSystem.FileDescriptor)])] =
        [:]
    var accepted = 0
    for (index, fd) in descriptors.enumerated() {
      guard index < snapshots.count, accepted < context.configuration.maxConnections,
        fd.isConnectedTCPSocket(), (try? fd.peerAddress()) == snapshots[index].peer
      else {
        fd.closeIgnoringErrors()
        continue
      }
      accepted += 1
      let loop = group.next()
      perLoop[ObjectIdentifier(loop), default: (loop, [])].1.append((snapshots[index], fd))
    }
    // Registered from inside each loop, one task per loop (see freezeAll).
    let futures = perLoop.values.map { loop, items in
      loop.flatSubmit {
        let each = items.map { snapshot, fd in
          bootstrap(group: loop, context: context, snapshot: snapshot)
            .withConnectedSocket(fd.rawValue)
        }
        return EventLoopFuture.whenAllComplete(each, on: loop).map { results in
          results.filter { (try? $0.get()) != nil }.count
        }
      }
    }
    return futures.reduce(0) { count, future in count + ((try? future.wait()) ?? 0) }
  }

  static func bootstrap(
    group: any EventLoopGroup, context: CacheServerContext, snapshot: ConnectionSnapshot
  ) -> ClientBootstrap {
    ClientBootstrap(group: group)
      .channelOption(.maxMessagesPerRead, value: 16)
      .channelOption(
        .writeBufferWaterMark,
        value: .init(
          low: context.configuration.pendingOutputLimit / 2,
          high: context.configuration.pendingOutputLimit)
      )
      .channelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          let handler = MemcacheHandler(context: context)
          handler.restored = snapshot
          try channel.pipeline.syncOperations.addHandler(handler)
        }
      }
  }
}

// MARK: The records' bytes

/// Snapshots as bytes, little-endian: "KHOCONN1", a u32 count, then per
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
    var bytes = magic
    append(UInt64(snapshots.count), to: &bytes)
    for snapshot in snapshots {
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
    return bytes
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

    mutating func u8() -> UInt8? { take(1)?[0] }

    mutating func u64() -> UInt64? {
      take(8).map { field in field.reversed().reduce(0) { $0 << 8 | UInt64($1) } }
    }

    mutating func field(max: Int) -> [UInt8]? {
      guard let count = u64(), count <= max else { return nil }
      return take(Int(count))
    }
  }
}
