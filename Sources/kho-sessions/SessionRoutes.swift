// The HTTP API: sessions, and a fixed-window rate limit per client.

import Hummingbird
import KHOCollections

#if canImport(Glibc)
  import Glibc
#endif

/// How the service limits and expires.
struct SessionPolicy: Sendable {
  /// Requests a client may make per window; 0 counts without limiting.
  var rateLimit: UInt64 = 0
  /// The rate window in seconds.
  var rateWindow: UInt64 = 3600
  /// A session's lifetime in seconds.
  var sessionTTL: UInt64 = 3600
}

/// Counts every request against its client (`X-Client` header, else
/// "anonymous") and answers 429 past the limit.
struct RateLimitMiddleware: RouterMiddleware {
  typealias Context = BasicRequestContext
  let state: SessionState
  let policy: SessionPolicy

  func handle(
    _ request: Request, context: Context, next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    let client = request.headers[.init("X-Client")!] ?? "anonymous"
    guard
      let count = state.countRequest(
        client: String(client.prefix(128)), window: policy.rateWindow, now: wallClockSeconds())
    else { return Response(status: .serviceUnavailable) }
    if policy.rateLimit > 0, count > policy.rateLimit {
      return Response(status: .tooManyRequests)
    }
    return try await next(request, context)
  }
}

/// The routes: `POST /sessions` (body: the user; answers the new id),
/// `GET|DELETE /sessions/:id`, `GET /rate/:client` (requests in its
/// window), `GET /stats`.
func sessionRouter(state: SessionState, policy: SessionPolicy, generation: UInt64)
  -> Router<BasicRequestContext>
{
  let router = Router()
  router.add(middleware: RateLimitMiddleware(state: state, policy: policy))
  router.post("/sessions") { request, context -> Response in
    let body = try await request.body.collect(upTo: 4096)
    let user = String(buffer: body)
    let id = newSessionID()
    let stored = state.mutate { maps -> Bool in
      // Full even after evicting the least recently used: say so rather
      // than hand out an id that was never stored.
      (try? maps.sessions.set(id, user, expiresAt: wallClockSeconds() + policy.sessionTTL)) != nil
    }
    guard case .done(true) = stored else { return Response(status: .serviceUnavailable) }
    return text(id, status: .created)
  }
  router.get("/sessions/:id") { _, context -> Response in
    let id = context.parameters.get("id") ?? ""
    let user = state.maps.withLock { $0.sessions[id] }
    guard let user else { return Response(status: .notFound) }
    return text(user)
  }
  router.delete("/sessions/:id") { _, context -> Response in
    let id = context.parameters.get("id") ?? ""
    guard case .done = state.mutate({ $0.sessions.removeValue(forKey: id) }) else {
      return Response(status: .serviceUnavailable)
    }
    return Response(status: .noContent)
  }
  router.get("/rate/:client") { _, context -> Response in
    let client = context.parameters.get("client") ?? ""
    let window = state.maps.withLock { $0.rates[client] }
    return text("\(window?.count ?? 0)")
  }
  router.get("/stats") { _, _ -> Response in
    let line = state.maps.withLock { maps in
      "sessions \(maps.sessions.count) rates \(maps.rates.count) damage \(maps.sessions.damage + maps.rates.damage) generation \(generation)"
    }
    return text(line)
  }
  return router
}

private func text(_ body: String, status: HTTPResponse.Status = .ok) -> Response {
  Response(
    status: status, headers: [.contentType: "text/plain"],
    body: .init(byteBuffer: ByteBuffer(string: body)))
}

/// 128 random bits in hex.
private func newSessionID() -> String {
  var generator = SystemRandomNumberGenerator()
  let high = generator.next() as UInt64
  let low = generator.next() as UInt64
  return String(high, radix: 16) + "-" + String(low, radix: 16)
}
