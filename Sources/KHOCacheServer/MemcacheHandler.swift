import KHOCacheStore
import KHOSystem
import NIOCore

/// One connection speaking memcached's text protocol to a `CacheStore`.
///
/// Bytes are accumulated until a full line (or a full data block) is there,
/// so partial reads and several commands in one read (pipelining) both work;
/// replies of one read are written with one flush (or one every
/// `outputFlushThreshold` bytes). The event loop only ever waits for the
/// store's short lock.
///
/// While the store is frozen for a handover, a mutating command is not
/// answered with an error at once: the connection parks (stops consuming
/// its input, keeps the command) and retries every
/// `frozenRetryInterval`; reads keep being answered. If the freeze is lifted
/// (KHO ABORT) the command completes; if the handover goes ahead, the
/// command goes to the next image with the connection (see
/// ConnectionHandover.swift); only after
/// `frozenWaitLimit` is it answered "SERVER_ERROR frozen for handover".
/// The limit is per pipeline, not per command: once it has expired, the
/// commands already buffered behind the one that waited are answered at
/// once (mutations with the error, reads normally), and a new wait starts
/// only for a command that arrives after the connection had consumed all
/// its input (the client sent it after the earlier replies), or once a
/// command has found the store thawed.
///
/// Nothing a client sends or fails to read grows the server without bound:
/// a line without a newline is cut off at memcached's limits, a data block
/// is at most one item (a bigger one is swallowed, not kept), and replies
/// are back-pressured: whenever `outputFlushThreshold` bytes have gathered
/// they are handed to the channel, and while the channel holds more than
/// `pendingOutputLimit` unsent bytes (it is not writable), the connection
/// runs no command (a multi-get pauses between keys) and does not read,
/// until `channelWritabilityChanged` says the client has caught up. All
/// connections together are held to `pendingOutputBudget`: past it, one
/// with replies in flight waits until they are written (`repliesFit`).
public final class MemcacheHandler: ChannelDuplexHandler {
  /// Bytes from the client.
  public typealias InboundIn = ByteBuffer
  /// Bytes written through the handler (passed on as they are).
  public typealias OutboundIn = ByteBuffer
  /// Replies to the client.
  public typealias OutboundOut = ByteBuffer

  let shared: CacheServerContext
  var store: CacheStore { shared.store }
  /// Received bytes not consumed yet.
  var input: ByteBuffer? {
    _read { yield buffers.pointee.input }
    _modify { yield &buffers.pointee.input }
  }
  /// Replies not written yet.
  var output: ByteBuffer {
    _read { yield buffers.pointee.output }
    _modify { yield &buffers.pointee.output }
  }
  /// Where `input`, `output` and `pending` live. As stored properties of
  /// this class every access to them paid a dynamic exclusivity check
  /// (about 200 instructions each, some 15 per request: a fifth of the
  /// handler's cost), and every look at `pending` copied it; through a
  /// pointer the accesses are not tracked at run time and reads borrow.
  /// That is safe because nothing ever accesses one of them while an
  /// access to the same one is under way: the handler runs on its event
  /// loop only, the closures given to the buffers' `with...` methods
  /// (completeClassicStore, completeMetaStore, writeValueLine) only read
  /// `pending` and touch neither buffer, and flushOutput takes its chunk
  /// out of `output` before NIO runs anything of ours from inside the
  /// write.
  private let buffers: UnsafeMutablePointer<Buffers>
  private struct Buffers {
    var input: ByteBuffer?
    var output: ByteBuffer
    var pending: PendingStore?
  }
  /// Bytes of a refused data block still to throw away (memcached's conn_swallow).
  var swallow = 0
  /// A storage command whose data block has not fully arrived.
  var pending: PendingStore? {
    _read { yield buffers.pointee.pending }
    _modify { yield &buffers.pointee.pending }
  }
  var parked = false
  var frozenSince: NIODeadline?
  var closing = false
  var admitted = false
  /// The first byte has been looked at (a binary-protocol client is refused: Stats.swift).
  var protocolChecked = false
  /// The channel holds more unsent replies than `pendingOutputLimit`, or
  /// all connections together more than `pendingOutputBudget` and this one
  /// some: run nothing until that is no longer so.
  var waitingForRepliesToDrain = false
  /// Reply bytes handed to the channel and not yet taken by the socket.
  var unsentBytes = 0
  /// A `resume` is queued on the event loop (resuming is never done from
  /// inside a write, which would nest one pipeline run in another).
  var resumeScheduled = false
  /// A read the channel asked for while the connection could not make
  /// progress (parked or waiting for writability), issued on resuming.
  var readDeferred = false
  /// While a line runs: the input bytes after it. A storage command whose
  /// data block is all there stores it from here (no copy of the key, no
  /// `pending`) and says in `dataConsumed` how many bytes it took. The
  /// checks processInput makes between a line and its data block (flush,
  /// writability) cannot come out differently in between: parsing a
  /// storage line writes no reply.
  var dataAfterLine: UnsafeRawBufferPointer?
  var dataConsumed = 0
  /// The key (token index) at which the get line at the head of `input`
  /// continues: a multi-get whose reply outgrew the output buffer, or met
  /// a frozen store (gat), resumes there instead of starting again.
  var retrieveResumeIndex: Int?
  /// The connection's event loop: its `now` is the clock of the freeze
  /// wait (so that tests on an embedded loop can move it).
  var eventLoop: (any EventLoop)?
  /// Frozen for a handover: reads nothing, runs nothing (see
  /// ConnectionHandover.swift).
  var frozenForHandover = false
  /// The freeze waiting for this connection's queued replies to be
  /// written (ConnectionHandover.swift).
  var drainWaiter: LoopFreeze?
  /// The registry's table of this connection's loop, while registered.
  var registryShard: ConnectionRegistry.Shard?
  /// This connection's descriptor and peer, found before a freeze.
  var handoverDescriptor: (KHOSystem.FileDescriptor, [UInt8])?
  /// Ran `requestsPerEvent` commands and let the event loop's other
  /// connections run; resumes from a task queued on the loop.
  var yielded = false
  /// What `stats conns` shows of this connection (Connections.swift);
  /// nil until admitted.
  var status: ConnectionStatus?
  /// Handed over by the previous image: taken up on activation.
  var restored: ConnectionSnapshot?
  /// Handed over, and already counted against `-c` by the adoption.
  var preAdmitted = false
  /// When the connection last read (uptime nanoseconds): a handover hands
  /// the busiest connections to the next image first.
  var lastRead: UInt64 = 0

  /// The longest line memcached waits for without a newline (2048), unless
  /// it is a get; and how long a get line may grow before we give up.
  static let maxLine = 2048
  static let maxGetLine = 2 << 20

  /// A handler sharing `context` with the server's other connections.
  public init(context: CacheServerContext) {
    self.shared = context
    self.buffers = .allocate(capacity: 1)
    self.buffers.initialize(to: Buffers(input: nil, output: ByteBuffer(), pending: nil))
  }

  deinit {
    buffers.deinitialize(count: 1)
    buffers.deallocate()
  }

  /// The reply buffer a connection starts with, and the most it keeps
  /// between flushes (a bigger one is let go, so that idle connections do
  /// not each hold the largest reply they ever sent).
  static let initialOutputCapacity = 1024
  static let retainedOutputCapacity = 64 << 10
  /// What `output` holds while its chunk is being written (shared, never
  /// written to in place: a write to it allocates a buffer of its own).
  static let noOutput = ByteBufferAllocator().buffer(capacity: 0)

  public func handlerAdded(context: ChannelHandlerContext) {
    eventLoop = context.eventLoop
  }

  /// Admits the connection (or refuses it past `-c`) and takes up a
  /// handed-over connection's state.
  public func channelActive(context: ChannelHandlerContext) {
    output = context.channel.allocator.buffer(capacity: Self.initialOutputCapacity)
    // Accepted into the reserve descriptor (the process is out of them),
    // or past -c: refused either way.
    admitted = preAdmitted || (!shared.takeOwedRefusal() && shared.admit())
    if !admitted {
      // memcached's reply when -c is reached.
      output.writeStaticString("ERROR Too many open connections\r\n")
      closing = true
      flushOutput(context)
      return
    }
    let status = ConnectionStatus(connection: context.channel)
    self.status = status
    shared.connections.add(self, context, status)
    if let snapshot = restored {
      restored = nil
      restore(snapshot, context)
    }
    context.fireChannelActive()
  }

  /// Releases the connection's slot and its place in the registry.
  public func channelInactive(context: ChannelHandlerContext) {
    shared.connections.remove(self)
    closing = true
    notifyDrainWaiter()
    if admitted {
      shared.release()
      admitted = false
    }
    // A descriptor is free now: keep one in reserve if it was given up.
    shared.acquireReserveDescriptor()
    closing = true
    context.fireChannelInactive()
  }

  /// Buffers the bytes and runs every complete command.
  public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    var buffer = unwrapInboundIn(data)
    lastRead = NIODeadline.now().uptimeNanoseconds
    shared.bytesRead.wrappingAdd(buffer.readableBytes, ordering: .relaxed)
    guard !closing else { return }
    if !protocolChecked && refusedBinaryProtocol(buffer, context) { return }
    if input == nil || input!.readableBytes == 0 {
      // Nothing was buffered (so nothing is parked): these commands were
      // sent after the earlier ones were consumed, and get their own
      // freeze wait.
      frozenSince = nil
      input = buffer
    } else {
      input!.writeBuffer(&buffer)
    }
    processInput(context)
  }

  /// Writes the replies of the read.
  public func channelReadComplete(context: ChannelHandlerContext) {
    flushOutput(context)
    context.fireChannelReadComplete()
  }

  /// Resumes a connection that waited for its replies to drain.
  public func channelWritabilityChanged(context: ChannelHandlerContext) {
    resumeIfRepliesFit(context)
    context.fireChannelWritabilityChanged()
  }

  /// Reads only while the connection makes progress: a parked connection,
  /// or one whose client does not take its replies, leaves further input
  /// in the socket (and so back-pressures its client through TCP).
  public func read(context: ChannelHandlerContext) {
    if parked || waitingForRepliesToDrain || frozenForHandover || yielded {
      readDeferred = true
      return
    }
    context.read()
  }

  /// Closes the connection.
  public func errorCaught(context: ChannelHandlerContext, error: Error) {
    closing = true
    context.close(promise: nil)
  }

  // MARK: Input

  /// Runs every complete command in `input`, in order, until input runs out,
  /// a command waits for the freeze to end, or the connection must close.
  func processInput(_ context: ChannelHandlerContext) {
    var ranCommand = false
    var commandsRun = 0
    defer { publishStatus(ranCommand: ranCommand) }
    while !parked && !closing && !waitingForRepliesToDrain && !frozenForHandover && !yielded,
      let readable = input?.readableBytes, readable > 0
    {
      if swallow > 0 {
        let count = min(swallow, readable)
        input!.moveReaderIndex(forwardBy: count)
        swallow -= count
        continue
      }
      if output.readableBytes >= shared.configuration.outputFlushThreshold {
        flushOutput(context)
      }
      guard repliesFit(context) else {
        // The client is not taking its replies: stop until it does.
        waitingForRepliesToDrain = true
        break
      }
      let outcome = pending != nil ? completeStore() : nextLine()
      switch outcome {
      case .done:
        ranCommand = true
        // A storage command counts once its data block is in.
        if pending == nil { commandsRun += 1 }
        if commandsRun >= shared.configuration.requestsPerEvent && (input?.readableBytes ?? 0) > 0 {
          yieldToOtherConnections(context)
        }
        // The freeze is over: a later freeze gets a full wait again.
        // (isFrozen takes the store's lock: asked only when there is a wait.)
        if frozenSince != nil && !store.isFrozen { frozenSince = nil }
      case .outputFull:
        // The loop flushes, then goes on or waits for writability.
        continue
      case .needMoreInput:
        compactInput()
        return
      case .frozen:
        park(context)
        return
      case .close: closing = true
      }
    }
    compactInput()
    if closing { flushOutput(context) }
  }

  /// memcached's `-R`: a connection that has run `requestsPerEvent`
  /// commands from one read goes to the back of its event loop's queue,
  /// so that one deep pipeline does not starve the loop's other
  /// connections (counted in `conn_yields`).
  private func yieldToOtherConnections(_ context: ChannelHandlerContext) {
    yielded = true
    shared.connectionYields.wrappingAdd(1, ordering: .relaxed)
    context.eventLoop.assumeIsolated().execute {
      self.yielded = false
      // Replies gather across yields (flushed at `outputFlushThreshold`,
      // or once the input is used up), not one write per yield.
      self.resume(context, flushingWhileYielding: false)
    }
  }

  /// Whether more replies may be queued: the channel is writable (this
  /// connection holds less than `pendingOutputLimit` unsent), and, while
  /// all connections together hold more than `pendingOutputBudget`, this
  /// one has nothing in flight. So a client that reads goes on (more
  /// slowly) and one that does not holds at most one flush of replies.
  func repliesFit(_ context: ChannelHandlerContext) -> Bool {
    guard context.channel.isWritable else { return false }
    return unsentBytes == 0
      || shared.unsentReplyBytes.load(ordering: .relaxed)
        <= shared.configuration.pendingOutputBudget
  }

  /// Resumes a connection that waited for its replies to drain, once they
  /// fit, from the event loop rather than from inside a write or a
  /// writability change (which may come from inside our own flush).
  private func resumeIfRepliesFit(_ context: ChannelHandlerContext) {
    guard waitingForRepliesToDrain && !resumeScheduled && repliesFit(context) else { return }
    resumeScheduled = true
    context.eventLoop.assumeIsolated().execute {
      self.resumeScheduled = false
      guard self.waitingForRepliesToDrain && self.repliesFit(context) else { return }
      self.waitingForRepliesToDrain = false
      self.resume(context)
    }
  }

  /// Runs what was held back (by a freeze or by unsent replies), writes
  /// the replies, and reads again if a read was held back too.
  func resume(_ context: ChannelHandlerContext, flushingWhileYielding: Bool = true) {
    guard !closing && !frozenForHandover else { return }
    processInput(context)
    if flushingWhileYielding || !yielded { flushOutput(context) }
    if readDeferred && !parked && !waitingForRepliesToDrain && !closing && !yielded {
      readDeferred = false
      context.read()
    }
  }

  /// Reads one line and runs it.
  private func nextLine() -> Outcome {
    let buffer = input!
    let newline = buffer.withUnsafeReadableBytes { $0.firstIndex(ofByte: UInt8(ascii: "\n")) }
    guard let newline else { return lineTooLong(buffer) ? .close : .needMoreInput }
    let outcome = buffer.withUnsafeReadableBytes { bytes -> Outcome in
      // memcached strips one "\r" before the "\n", unless it is the whole line.
      var end = newline > 1 && bytes[newline - 1] == UInt8(ascii: "\r") ? newline - 1 : newline
      // memcached tokenizes the line as a C string: it ends at a NUL byte
      // ("get a\0b" is "get a"; "set a\0b 0 0 1" is "set a", an ERROR).
      if let nul = bytes.slice(0..<end).firstIndex(ofByte: 0) { end = nul }
      dataAfterLine = bytes.slice(newline + 1..<bytes.count)
      defer { dataAfterLine = nil }
      return execute(line: bytes.slice(0..<end))
    }
    // A command that will run again later keeps its line.
    if outcome != .frozen && outcome != .outputFull {
      input!.moveReaderIndex(forwardBy: newline + 1 + dataConsumed)
      dataConsumed = 0
      retrieveResumeIndex = nil
    }
    return outcome
  }

  /// memcached closes a connection that sends 2 KiB without a newline,
  /// unless the line is a get (multi-gets may be long).
  private func lineTooLong(_ buffer: ByteBuffer) -> Bool {
    guard buffer.readableBytes > Self.maxLine else { return false }
    if buffer.readableBytes > Self.maxGetLine { return true }
    return buffer.withUnsafeReadableBytes { bytes in
      var start = 0
      while start < bytes.count && bytes[start] == UInt8(ascii: " ") { start += 1 }
      let rest = bytes.slice(start..<bytes.count)
      return start > 100 || !(rest.hasPrefix("get ") || rest.hasPrefix("gets "))
    }
  }

  private func compactInput() {
    guard let buffer = input else { return }
    if buffer.readableBytes == 0 {
      input = nil
    } else if buffer.readerIndex > 65536 {
      input!.discardReadBytes()
    }
  }

  // MARK: Freeze

  /// The store is frozen: keep the command, retry soon, or give up after
  /// the limit.
  private func park(_ context: ChannelHandlerContext) {
    parked = true
    if frozenSince == nil { frozenSince = context.eventLoop.now }
    flushOutput(context)
    context.eventLoop.assumeIsolated().scheduleTask(in: shared.configuration.frozenRetryInterval) {
      self.parked = false
      self.resume(context)
    }
  }

  /// Whether a command that met a frozen store has waited long enough to be
  /// answered with an error instead.
  var frozenWaitExpired: Bool {
    guard let frozenSince, let eventLoop else { return false }
    return eventLoop.now - frozenSince >= shared.configuration.frozenWaitLimit
  }

  // MARK: Output

  /// Hands the gathered replies to the channel. While a refused data block
  /// is being swallowed they are held, as memcached holds them, so that
  /// the reply to a too-large set comes after its data, not before.
  ///
  /// Usually the socket takes the whole chunk inside `writeAndFlush`, and
  /// then NIO has let go of the chunk's storage by the time it returns:
  /// `output` is its only owner again, so it is cleared and reused (no
  /// buffer, promise or callback per flush). Only when NIO still holds the
  /// chunk (the socket took part of it, or earlier replies are queued)
  /// are its bytes counted as unsent, until a promise on an empty write
  /// queued behind it says they are written (NIO completes writes in
  /// order, an empty one once everything before it is out).
  func flushOutput(_ context: ChannelHandlerContext) {
    if output.readableBytes > 0 && (swallow == 0 || closing) {
      let count = output.readableBytes
      shared.bytesWritten.wrappingAdd(count, ordering: .relaxed)
      // Taken out first: anything run from inside the write (a promise's
      // callback) that replies writes to a buffer of its own.
      var chunk = output
      output = Self.noOutput
      let storage = chunk.withVeryUnsafeBytes { $0.baseAddress }
      context.writeAndFlush(wrapOutboundOut(chunk), promise: nil)
      // clear() keeps the storage only if no one else references it.
      chunk.clear()
      let writtenAlready = chunk.withVeryUnsafeBytes { $0.baseAddress } == storage
      if output.readableBytes == 0 {
        // A big reply (a long multi-get) does not keep its buffer.
        output =
          chunk.capacity <= Self.retainedOutputCapacity
          ? chunk : context.channel.allocator.buffer(capacity: Self.initialOutputCapacity)
      }
      if writtenAlready {
        // Nothing became unsent; a wait for writability may end here as
        // it did when a write's promise completed inside the flush.
        resumeIfRepliesFit(context)
      } else {
        trackUnsent(count, context)
      }
    }
    if closing {
      context.close(promise: nil)
    }
  }

  /// `count` reply bytes are in the channel, not yet taken by the socket:
  /// held against the limits until a write queued behind them completes.
  private func trackUnsent(_ count: Int, _ context: ChannelHandlerContext) {
    unsentBytes += count
    shared.unsentReplyBytes.wrappingAdd(count, ordering: .relaxed)
    let written = context.eventLoop.makePromise(of: Void.self)
    // Written, or failed at close: no longer held either way.
    written.futureResult.assumeIsolated().whenComplete { _ in
      self.unsentBytes -= count
      self.shared.unsentReplyBytes.wrappingSubtract(count, ordering: .relaxed)
      self.resumeIfRepliesFit(context)
      self.notifyDrainWaiter()
    }
    context.writeAndFlush(
      wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: written)
  }
}

/// What running one command did.
enum Outcome: Equatable {
  /// Consumed and answered.
  case done
  /// Needs more bytes (a data block, or the rest of a line).
  case needMoreInput
  /// Met a frozen store: keep it, retry later.
  case frozen
  /// Its reply so far fills the output buffer: keep the line (a get goes
  /// on from `retrieveResumeIndex`), flush, and go on when writable.
  case outputFull
  /// The connection must close after what is already written.
  case close
}

/// A parsed storage command waiting for its data block.
struct PendingStore {
  var mode: StoreMode
  var key: [UInt8]
  var flags: UInt32
  var exptime: Int64
  var length: Int
  var noreply: Bool
  /// An `ms`: how to word its reply (MetaCommands.swift).
  var meta: PendingMetaStore? = nil
}
