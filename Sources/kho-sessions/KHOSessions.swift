// kho-sessions: a Hummingbird session store and rate limiter whose state
// lives in arena hash maps, upgraded by the handover runtime with every
// session and counter kept. Boots as kho-cache does: runtime, claim, the
// inherited listener, ready, attach or format, KHO node, control mount.

import Hummingbird
import KHO
import KHORuntime
import KHOServiceControl
import Logging
import NIOCore
import NIOPosix

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

  static func run(_ options: SessionOptions, logger: Logger) async throws {
    let stateBytes = UInt64(options.stateMegabytes) << 20
    let runtime = try HandoverRuntime.boot(
      KHOOptions(
        arenaSize: stateBytes + (32 << 20), scratchSize: 16 << 20, arenaName: "kho-sessions"),
      logger: logger)
    let claimed = SessionState.claim(from: runtime.kho, logger: logger)
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    let listener = try listeningSocket(runtime, options, logger: logger)
    // An overlapped predecessor serves until ready() says it let go;
    // nothing handed over is read before.
    guard runtime.ready(status: "starting") else { exit(1) }
    let adopted = claimed.flatMap { SessionState.attach($0, in: runtime.kho, logger: logger) }
    let state = try adopted ?? SessionState.fresh(in: runtime.kho, bytes: stateBytes)
    try state.register(with: runtime.kho)

    let tracker = ConnectionTracker(limit: options.maxConnections)
    let router = sessionRouter(
      state: state, policy: options.policy, generation: runtime.kho.generation)
    let server = InheritedListenerServer(
      fd: listener, responder: router.buildResponder(), group: group, tracker: tracker,
      logger: logger)
    let (channel, http1) = try await server.bind()
    let control = try startControlMount(runtime, options, channel.channel, tracker)
    let sessions = state.maps.withLock { $0.sessions.count }
    logger.info(
      "kho-sessions: \(adopted != nil ? "took over" : "started cold with") \(sessions) sessions, generation \(runtime.kho.generation), listening on \(options.listen):\(options.port)"
    )
    try? runtime.notifier.status("serving \(sessions) sessions")
    let signals = SignalHandling(control: control, logger: logger)
    try await server.serve(channel, http1)
    withExtendedLifetime(signals) {}
  }

  /// The listener the previous image handed over as "listen", or a new one;
  /// registered to be handed over next time.
  static func listeningSocket(_ runtime: HandoverRuntime, _ options: SessionOptions, logger: Logger)
    throws -> Int32
  {
    let fd: Int32
    if let inherited = runtime.inherited["listen"], isListening(inherited) {
      fd = inherited
    } else {
      fd = try bindListener(host: options.listen, port: options.port)
    }
    try runtime.register(fd, name: "listen")
    return fd
  }

  /// The control files (`kho exec` drives them). Before the handover the
  /// server stops accepting (new connections wait in the backlog for the
  /// next image) and drains: each open connection gets its last response
  /// with `Connection: close`, so no client sees a request fail.
  static func startControlMount(
    _ runtime: HandoverRuntime, _ options: SessionOptions, _ server: any Channel,
    _ tracker: ConnectionTracker
  ) throws -> ServiceControl? {
    var path = options.controlMount
    if path == nil, let dir = getenv("RUNTIME_DIRECTORY") {
      path = String(cString: dir).split(separator: ":").first.map { "\($0)/kho" }
    }
    guard let path, path != "none" else { return nil }
    mkdir(path, 0o755)
    return try ServiceControl.start(
      runtime: runtime, mountPoint: path,
      hooks: .init(
        stopServing: {
          _ = try? server.setOption(ChannelOptions.autoRead, value: false).wait()
          tracker.drain(limit: .seconds(2))
        },
        resumeServing: {
          tracker.resume()
          _ = try? server.setOption(ChannelOptions.autoRead, value: true).wait()
        },
        committed: {
          fflush(nil)
          exit(0)
        }))
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

/// Whether `fd` is a listening socket (SO_ACCEPTCONN).
func isListening(_ fd: Int32) -> Bool {
  var accepting: Int32 = 0
  var length = socklen_t(MemoryLayout<Int32>.size)
  return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length) == 0 && accepting == 1
}
