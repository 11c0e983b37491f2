// Hummingbird on a listening socket the service already holds (one the
// previous image handed over), as a Service of the group beside
// HandoverService. Hummingbird's `Application` only binds an address, so
// this mirrors its server loop on the supported pieces: HummingbirdCore's
// `HTTP1Channel` (the `ServerChildChannel` Hummingbird's own server uses) on
// NIO's `ServerBootstrap.bind(_:childChannelInitializer:)`, which takes an
// existing socket descriptor.

import Dispatch
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// The open connections, so that an upgrade or a shutdown can let each
/// finish its current request and close.
final class ConnectionTracker: Sendable {
  private struct State {
    var open: [ObjectIdentifier: any Channel] = [:]
    var draining = false
  }
  private let state = Mutex(State())

  /// The most connections open at once; one more is closed on arrival.
  let limit: Int

  init(limit: Int) { self.limit = limit }

  /// Counts `channel` until it closes, as the listener accepts it (on the
  /// server channel's event loop, in the same read as the accept). The
  /// child is set up later, on its own loop: counted only then, a
  /// connection accepted just before the listener stopped could escape a
  /// drain and be reset by the exec. Past the limit it is not counted, and
  /// ``admit(_:)`` closes it.
  func accepted(_ channel: any Channel) {
    let id = ObjectIdentifier(channel)
    let counted = state.withLock { state -> Bool in
      guard state.open.count < limit else { return false }
      state.open[id] = channel
      return true
    }
    guard counted else { return }
    channel.closeFuture.whenComplete { [self] _ in
      _ = state.withLock { $0.open.removeValue(forKey: id) }
    }
  }

  /// In the child's set-up: whether ``accepted(_:)`` counted it; if not
  /// (past the limit), it is closed.
  @discardableResult
  func admit(_ channel: any Channel) -> Bool {
    guard state.withLock({ $0.open[ObjectIdentifier(channel)] != nil }) else {
      channel.close(promise: nil)
      return false
    }
    return true
  }

  /// Whether responses should now close their connection.
  var isDraining: Bool { state.withLock { $0.draining } }
  var openCount: Int { state.withLock { $0.open.count } }

  /// Marks every next response `Connection: close`, waits (at most
  /// `limit`) for the clients to take their last response and go, then
  /// closes what is left: connections idle the whole time. Blocks: runs on
  /// the control mount's thread or the handover's queue, never on an event
  /// loop or the concurrency pool.
  func drain(limit: Duration) {
    state.withLock { $0.draining = true }
    let deadline = ContinuousClock.now + limit
    // A poll, not a wait on a condition: the connections close on event
    // loops, and the count is cheap to read; 1 ms steps bound the pause.
    while openCount > 0, ContinuousClock.now < deadline { usleep(1000) }
    let left = state.withLock { Array($0.open.values) }
    for channel in left { channel.close(promise: nil) }
  }

  func resume() { state.withLock { $0.draining = false } }
}

/// Serves `responder` over HTTP/1.1 on the listening socket `fd` until
/// graceful shutdown (or cancellation, after a committed handover).
///
/// ``stopServing()`` and ``resumeServing()`` are HandoverService's hooks:
/// around a handover the server stops accepting (new connections wait in
/// the backlog for the next image) and drains.
final class InheritedListenerServer<Responder: HTTPResponder>: Service, Sendable
where Responder.Context == BasicRequestContext {
  let fd: Int32
  let responder: Responder
  let group: MultiThreadedEventLoopGroup
  let tracker: ConnectionTracker
  let logger: Logger

  private struct Accepting {
    var server: (any Channel)?
    /// A handover is running: not accepting, even once bound.
    var paused = false
  }
  private let accepting = Mutex(Accepting())

  init(
    fd: Int32, responder: Responder, group: MultiThreadedEventLoopGroup,
    tracker: ConnectionTracker, logger: Logger
  ) {
    self.fd = fd
    self.responder = responder
    self.group = group
    self.tracker = tracker
    self.logger = logger
  }

  /// The server channel, once bound.
  typealias Bound = NIOAsyncChannel<HTTP1Channel.Value, Never>

  /// Binds on `fd`, then accepts until graceful shutdown closes the server
  /// channel and the connections have drained.
  func run() async throws {
    let (server, http1) = try await bind()
    // Bound not accepting: a handover may have begun (SIGHUP, queued while
    // this image booted), and a connection accepted now would miss its drain.
    let accept = accepting.withLock { shared -> EventLoopFuture<Void>? in
      shared.server = server.channel
      return shared.paused ? nil : server.channel.setOption(ChannelOptions.autoRead, value: true)
    }
    try await accept?.get()
    let tracker = self.tracker
    try await withGracefulShutdownHandler {
      try await serve(server, http1)
    } onGracefulShutdown: {
      // No new connection (the listener closes), then each open one gets
      // its last response with `Connection: close`; off the caller's thread.
      server.channel.close(promise: nil)
      DispatchQueue.global().async { tracker.drain(limit: .seconds(2)) }
    }
  }

  /// Before a handover: stop accepting, then drain the open connections.
  func stopServing() {
    setAccepting(false)
    tracker.drain(limit: .seconds(2))
  }

  /// After a failed handover: accept again.
  func resumeServing() {
    tracker.resume()
    setAccepting(true)
  }

  /// Asks the server channel to accept or not, under the lock: the event
  /// loop applies the requests in the order the lock gave them, whoever
  /// (the bind, a hook) asked. Blocks until applied; never on an event loop.
  private func setAccepting(_ on: Bool) {
    let applied = accepting.withLock { shared -> EventLoopFuture<Void>? in
      shared.paused = !on
      return shared.server?.setOption(ChannelOptions.autoRead, value: on)
    }
    _ = try? applied?.wait()
  }

  private func bind() async throws -> (Bound, HTTP1Channel) {
    // An idle keep-alive connection is closed after a minute: a peer
    // cannot hold one of the limited connections for ever.
    let http1 = HTTP1Channel(
      responder: respond, configuration: .init(idleTimeout: .seconds(60)))
    let tracker = self.tracker
    let logger = self.logger
    let server = try await ServerBootstrap(group: group)
      .serverChannelOption(ChannelOptions.autoRead, value: false)
      .serverChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(CountAccepted(tracker: tracker))
        }
      }
      .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
      .bind(fd) { channel in
        tracker.admit(channel)
        return http1.setup(channel: channel, logger: logger)
      }
    return (server, http1)
  }

  /// Accepts until the server channel closes, each connection in its task.
  private func serve(_ server: Bound, _ http1: HTTP1Channel) async throws {
    let logger = self.logger
    try await withThrowingDiscardingTaskGroup { group in
      try await server.executeThenClose { inbound in
        for try await connection in inbound {
          group.addTask { await http1.handle(value: connection, logger: logger) }
        }
      }
    }
  }

  /// One request, as Hummingbird's `Application` answers it: the router's
  /// response, a 500 for an error it did not turn into one; and while
  /// draining, `Connection: close` so the client reconnects to the next image.
  @Sendable
  private func respond(
    _ request: Request, _ writer: consuming ResponseWriter, _ channel: any Channel
  ) async throws {
    let context = BasicRequestContext(source: .init(channel: channel, logger: logger))
    var response: Response
    do {
      response = try await responder.respond(to: request, context: context)
    } catch {
      response = Response(status: .internalServerError)
    }
    // Decided once: a connection is closed only after a response that said
    // so. Asking twice let a drain that began during the write close a
    // connection whose client had not been told, and its next request
    // failed (a wrk read error across an upgrade).
    let closing = tracker.isDraining
    if closing { response.headers[.connection] = "close" }
    try await writer.write(response: response.head, body: response.body)
    if closing {
      // HTTP1Channel keeps a connection open unless the request asked to
      // close it; close it here, after the response is written.
      channel.close(promise: nil)
    }
  }
}

/// In the server channel's pipeline, ahead of the bootstrap's own accept
/// handler: counts each connection in the read that accepted it.
private final class CountAccepted: ChannelInboundHandler {
  typealias InboundIn = any Channel
  typealias InboundOut = any Channel
  let tracker: ConnectionTracker

  init(tracker: ConnectionTracker) { self.tracker = tracker }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    tracker.accepted(unwrapInboundIn(data))
    context.fireChannelRead(data)
  }
}
