// kho-sessions: a Hummingbird session store and rate limiter whose state
// lives in arena hash maps, upgraded by the handover runtime with every
// session and counter kept. A ServiceGroup of two services: HandoverService
// (the runtime, the control mount, SIGHUP) and the HTTP server.

import Hummingbird
import KHO
import KHOServiceLifecycle
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

#if canImport(Glibc)
  import Glibc
#endif

/// The command line: `kho-sessions [--port N] [--listen ADDR]
/// [--control-mount PATH|none] [--rate-limit N] [--rate-window S]
/// [--session-ttl S] [--state-megabytes M] [--max-connections N]`.
struct SessionOptions {
  var port = 8080
  var listen = "127.0.0.1"
  var controlMount: String?
  var policy = SessionPolicy()
  var stateMegabytes = 64
  var maxConnections = 1024

  static let usage =
    "usage: kho-sessions [--port N] [--listen ADDR] [--control-mount PATH|none] [--rate-limit N] [--rate-window S] [--session-ttl S] [--state-megabytes M] [--max-connections N]"

  /// Parses `arguments`; a bad one names itself.
  init(_ arguments: [String]) throws {
    var rest = arguments[...]
    while let flag = rest.popFirst() {
      guard let value = rest.popFirst() else { throw OptionError("\(flag) needs a value") }
      switch flag {
      case "--port": port = try number(flag, value, in: 0...65535)
      case "--listen": listen = value
      case "--control-mount": controlMount = value
      case "--rate-limit":
        policy.rateLimit = UInt64(try number(flag, value, in: 0...Int(Int32.max)))
      case "--rate-window": policy.rateWindow = UInt64(try number(flag, value, in: 1...86400 * 365))
      case "--session-ttl": policy.sessionTTL = UInt64(try number(flag, value, in: 1...86400 * 365))
      case "--state-megabytes": stateMegabytes = try number(flag, value, in: 1...65536)
      case "--max-connections": maxConnections = try number(flag, value, in: 1...1_000_000)
      default: throw OptionError("unknown option \(flag)\n\(Self.usage)")
      }
    }
  }

  private func number(_ flag: String, _ value: String, in range: ClosedRange<Int>) throws -> Int {
    guard let n = Int(value), range.contains(n) else {
      throw OptionError("\(flag) \(value): not a number in \(range)")
    }
    return n
  }
}

struct OptionError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

@main
enum KHOSessions {
  static func main() async {
    LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
    let logger = Logger(label: "kho-sessions")
    do {
      let options = try SessionOptions(Array(CommandLine.arguments.dropFirst()))
      try await run(options, logger: logger)
    } catch {
      logger.error("kho-sessions: \(error)")
      exit(1)
    }
  }

  /// Boots as every service of HandoverService does: the runtime, the
  /// listener and the state's range claimed; ready (an overlapped
  /// predecessor let go); the maps attached or formatted and their KHO
  /// node registered; then the group runs until graceful shutdown or a
  /// committed handover.
  static func run(_ options: SessionOptions, logger: Logger) async throws {
    let stateBytes = UInt64(options.stateMegabytes) << 20
    let kho = try HandoverService.boot(
      KHOOptions(
        arenaSize: stateBytes + (32 << 20), scratchSize: 16 << 20, arenaName: "kho-sessions"),
      configuration: .init(controlMountPoint: controlMountPoint(options), mode: .inPlace),
      logger: logger)
    let listener = try kho.listeningSocket(named: "listen") {
      try bindListener(host: options.listen, port: options.port)
    }
    let claimed = SessionState.claim(from: kho.runtime.kho, logger: logger)
    // Nothing handed over is read before the predecessor let go.
    guard await kho.ready(status: "starting") else { exit(1) }
    let adopted = claimed.flatMap { SessionState.attach($0, in: kho.runtime.kho, logger: logger) }
    let state = try adopted ?? SessionState.fresh(in: kho.runtime.kho, bytes: stateBytes)
    try state.register(with: kho.runtime.kho)

    let events = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let router = sessionRouter(
      state: state, policy: options.policy, generation: kho.runtime.kho.generation)
    let http = InheritedListenerServer(
      fd: listener, responder: router.buildResponder(), group: events,
      tracker: ConnectionTracker(limit: options.maxConnections), logger: logger)
    kho.onStopServing {
      http.stopServing()
      state.record(in: kho.metrics)
    }
    kho.onResumeServing { http.resumeServing() }
    state.record(in: kho.metrics)

    let sessions = state.maps.withLock { $0.sessions.count }
    logger.info(
      "kho-sessions: \(adopted != nil ? "took over" : "started cold with") \(sessions) sessions, generation \(kho.runtime.kho.generation), listening on \(options.listen):\(options.port)"
    )
    try? kho.runtime.notifier.status("serving \(sessions) sessions")
    // Shut down in reverse: the HTTP server drains first, then the
    // control mount goes. A committed handover ends HandoverService's run:
    // the server then shuts down as gracefully, and the process exits.
    let group = ServiceGroup(
      configuration: .init(
        services: [
          .init(service: kho, successTerminationBehavior: .gracefullyShutdownGroup),
          .init(service: http),
        ],
        gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
    try await group.run()
    try await events.shutdownGracefully()
  }

  /// `--control-mount`, else `$RUNTIME_DIRECTORY/kho` under systemd; nil
  /// for none.
  static func controlMountPoint(_ options: SessionOptions) -> String? {
    var path = options.controlMount
    if path == nil, let dir = getenv("RUNTIME_DIRECTORY") {
      path = String(cString: dir).split(separator: ":").first.map { "\($0)/kho" }
    }
    guard let path, path != "none" else { return nil }
    mkdir(path, 0o755)
    return path
  }
}

/// A TCP listener on `host:port`, close-on-exec (the runtime clears that
/// only for a handover's exec).
func bindListener(host: String, port: Int) throws -> Int32 {
  var hints = addrinfo()
  hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
  var result: UnsafeMutablePointer<addrinfo>?
  guard getaddrinfo(host, String(port), &hints, &result) == 0, let info = result else {
    throw OptionError("cannot resolve \(host)")
  }
  defer { freeaddrinfo(result) }
  let fd = socket(
    info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
  guard fd >= 0 else { throw OptionError("socket: \(String(cString: strerror(errno)))") }
  var one: Int32 = 1
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
  guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0, listen(fd, 4096) == 0 else {
    let message = String(cString: strerror(errno))
    close(fd)
    throw OptionError("cannot listen on \(host):\(port): \(message)")
  }
  return fd
}
