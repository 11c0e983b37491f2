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

  /// Tracks `channel` until it closes; false (and closed) past the limit.
  @discardableResult
  func opened(_ channel: any Channel) -> Bool {
    let id = ObjectIdentifier(channel)
    let admitted = state.withLock { state -> Bool in
      guard state.open.count < limit else { return false }
      state.open[id] = channel
      return true
    }
    guard admitted else {
      channel.close(promise: nil)
      return false
    }
    channel.closeFuture.whenComplete { [self] _ in
      _ = state.withLock { $0.open.removeValue(forKey: id) }
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
    /// A handover began before the server was bound: bind paused.
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
    let paused = accepting.withLock { shared -> Bool in
      shared.server = server.channel
      return shared.paused
    }
    if paused { setAccepting(false, on: server.channel) }
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
    let server = accepting.withLock { shared -> (any Channel)? in
      shared.paused = true
      return shared.server
    }
    if let server { setAccepting(false, on: server) }
    tracker.drain(limit: .seconds(2))
  }

  /// After a failed handover: accept again.
  func resumeServing() {
    tracker.resume()
    let server = accepting.withLock { shared -> (any Channel)? in
      shared.paused = false
      return shared.server
    }
    if let server { setAccepting(true, on: server) }
  }

  private func setAccepting(_ on: Bool, on server: any Channel) {
    _ = try? server.setOption(ChannelOptions.autoRead, value: on).wait()
  }

  private func bind() async throws -> (Bound, HTTP1Channel) {
    // An idle keep-alive connection is closed after a minute: a peer
    // cannot hold one of the limited connections for ever.
    let http1 = HTTP1Channel(
      responder: respond, configuration: .init(idleTimeout: .seconds(60)))
    let tracker = self.tracker
    let logger = self.logger
    let server = try await ServerBootstrap(group: group)
      .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
      .bind(fd) { channel in
        tracker.opened(channel)
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
