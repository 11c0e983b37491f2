import KHOCacheStore
import NIOCore

/// One connection speaking memcached's text protocol to a `CacheStore`.
///
/// Bytes are accumulated until a full line (or a full data block) is there,
/// so partial reads and several commands in one read (pipelining) both work;
/// replies of one read are written with one flush. The event loop only ever
/// waits for the store's short lock.
///
/// While the store is frozen for a handover, a mutating command is not
/// answered with an error at once: the connection parks (stops consuming
/// its input, keeps the command) and retries every
/// `frozenRetryInterval`; reads keep being answered. If the freeze is lifted
/// (KHO ABORT) the command completes; if the process execs, the connection
/// closes and the client retries on the next image; only after
/// `frozenWaitLimit` is it answered "SERVER_ERROR frozen for handover".
public final class MemcacheHandler: ChannelInboundHandler {
  public typealias InboundIn = ByteBuffer
  public typealias OutboundOut = ByteBuffer

  let shared: CacheServerContext
  var store: CacheStore { shared.store }
  /// Received bytes not consumed yet.
  var input: ByteBuffer?
  /// Replies not written yet.
  var output: ByteBuffer
  /// Bytes of a refused data block still to throw away (memcached's conn_swallow).
  var swallow = 0
  /// A storage command whose data block has not fully arrived.
  var pending: PendingStore?
  var parked = false
  var frozenSince: NIODeadline?
  var closing = false
  var admitted = false
  /// The connection's event loop: its `now` is the clock of the freeze
  /// wait (so that tests on an embedded loop can move it).
  var eventLoop: (any EventLoop)?

  /// The longest line memcached waits for without a newline (2048), unless
  /// it is a get; and how long a get line may grow before we give up.
  static let maxLine = 2048
  static let maxGetLine = 2 << 20

  /// A handler sharing `context` with the server's other connections.
  public init(context: CacheServerContext) {
    self.shared = context
    self.output = ByteBuffer()
  }

  public func handlerAdded(context: ChannelHandlerContext) {
    eventLoop = context.eventLoop
  }

  public func channelActive(context: ChannelHandlerContext) {
    output = context.channel.allocator.buffer(capacity: 1024)
    admitted = shared.admit()
    if !admitted {
      // memcached's reply when -c is reached.
      output.writeStaticString("ERROR Too many open connections\r\n")
      closing = true
      flushOutput(context)
      return
    }
    context.fireChannelActive()
  }

  public func channelInactive(context: ChannelHandlerContext) {
    if admitted {
      shared.release()
      admitted = false
    }
    closing = true
    context.fireChannelInactive()
  }

  public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    var buffer = unwrapInboundIn(data)
    shared.bytesRead.wrappingAdd(buffer.readableBytes, ordering: .relaxed)
    guard !closing else { return }
    if input == nil || input!.readableBytes == 0 {
      input = buffer
    } else {
      input!.writeBuffer(&buffer)
    }
    processInput(context)
  }

  public func channelReadComplete(context: ChannelHandlerContext) {
    flushOutput(context)
    context.fireChannelReadComplete()
  }

  public func errorCaught(context: ChannelHandlerContext, error: Error) {
    closing = true
    context.close(promise: nil)
  }

  // MARK: Input

  /// Runs every complete command in `input`, in order, until input runs out,
  /// a command waits for the freeze to end, or the connection must close.
  func processInput(_ context: ChannelHandlerContext) {
    while !parked && !closing, let readable = input?.readableBytes, readable > 0 {
      if swallow > 0 {
        let count = min(swallow, readable)
        input!.moveReaderIndex(forwardBy: count)
        swallow -= count
        continue
      }
      let outcome = pending != nil ? completeStore() : nextLine()
      switch outcome {
      case .done: frozenSince = nil
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

  /// Reads one line and runs it.
  private func nextLine() -> Outcome {
    let buffer = input!
    let newline = buffer.withUnsafeReadableBytes { bytes in
      bytes.firstIndex(of: UInt8(ascii: "\n"))
    }
    guard let newline else { return lineTooLong(buffer) ? .close : .needMoreInput }
    let outcome = buffer.withUnsafeReadableBytes { bytes -> Outcome in
      // memcached strips one "\r" before the "\n", unless it is the whole line.
      let end = newline > 1 && bytes[newline - 1] == UInt8(ascii: "\r") ? newline - 1 : newline
      return execute(line: bytes.slice(0..<end))
    }
    if outcome != .frozen { input!.moveReaderIndex(forwardBy: newline + 1) }
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
      guard !self.closing else { return }
      self.processInput(context)
      self.flushOutput(context)
    }
  }

  /// Whether a command that met a frozen store has waited long enough to be
  /// answered with an error instead.
  var frozenWaitExpired: Bool {
    guard let frozenSince, let eventLoop else { return false }
    return eventLoop.now - frozenSince >= shared.configuration.frozenWaitLimit
  }

  // MARK: Output

  func flushOutput(_ context: ChannelHandlerContext) {
    if output.readableBytes > 0 {
      shared.bytesWritten.wrappingAdd(output.readableBytes, ordering: .relaxed)
      let chunk = output
      output = context.channel.allocator.buffer(capacity: 1024)
      context.writeAndFlush(wrapOutboundOut(chunk), promise: nil)
    }
    if closing {
      context.close(promise: nil)
    }
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
}
