import ArgumentParser
import KHO
import KHOCacheServer
import KHOCacheStore
import KHORuntime
import KHOServiceControl
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// `kho-cache`: a memcached-protocol cache server whose items live in the
/// KHO arena, so that it upgrades to its next version with nothing lost.
@main
struct KHOCacheCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "kho-cache",
    abstract:
      "A memcached-compatible cache server (text protocol) that upgrades to its next version with every item kept.",
    discussion: """
      Options follow memcached's: point any memcached client at --listen:--port.
      Items, the hash index and the LRU live in a KHO arena (a memfd) at fixed
      offsets, so the next version of the server takes them over as they are,
      with no per-item work at start-up.

      Upgrading: with --control-mount M, `kho exec M -- /path/to/kho-cache ARGS`
      (in place, or with --overlapped); or send SIGHUP, which hands over in
      place to the executable at the path this one was started from (replace
      the file, then reload). The listening socket is handed over: clients
      that connect meanwhile wait in its backlog.
      """)

  @Option(name: [.short, .long], help: "TCP port to listen on.")
  var port: Int = 11211

  @Option(name: [.short, .long], help: "Address to listen on.")
  var listen: String = "127.0.0.1"

  @Option(name: [.short, .customLong("memory-limit")], help: "Item memory in megabytes.")
  var memoryLimit: Int = 64

  @Option(
    name: [.customShort("c"), .customLong("max-connections")],
    help: "Most simultaneous connections.")
  var maxConnections: Int = 1024

  @Option(
    name: [.customShort("I"), .customLong("max-item-size")],
    help: "Largest item (key, value and overhead): bytes, or with a k/m suffix. Between 1k and 1g.")
  var maxItemSize: String = "1m"

  @Option(name: [.short, .long], help: "Event loop threads.")
  var threads: Int = 4

  @Option(
    name: .customLong("kho-scratch"),
    help: """
      Size of the KHO scratch region, with the kernel's memparse syntax (512K, 64M, 1G...). \
      Defaults to $KHO_SCRATCH, else 16M. 0 disables handover (KHO refuses to activate).
      """)
  var khoScratch: String?

  @Flag(
    name: .customLong("huge-pages"),
    help: "Back the arena with 2 MiB pages (hugetlb if reserved, else transparent huge pages).")
  var hugePages = false

  @Option(
    name: .customLong("control-mount"),
    help: """
      Serve the KHO control files here (kernel/kho/active, kernel/kexec/...). \
      Defaults to $RUNTIME_DIRECTORY/kho when systemd gives a runtime directory; \
      'none' disables it.
      """)
  var controlMount: String?

  func validate() throws {
    guard let size = parseSize(maxItemSize), (1024...(1 << 30)).contains(size) else {
      throw ValidationError("--max-item-size must be between 1k and 1g, got \(maxItemSize)")
    }
    guard memoryLimit > 0 else { throw ValidationError("--memory-limit must be positive") }
    guard memoryLimit <= Self.memoryLimitMax else {
      throw ValidationError(
        "--memory-limit \(memoryLimit) is too large: at most \(Self.memoryLimitMax) megabytes (64 TiB)"
      )
    }
    guard threads > 0 else { throw ValidationError("--threads must be positive") }
    guard maxConnections > 0 else { throw ValidationError("--max-connections must be positive") }
    if let khoScratch, (try? KernelParsing.memparse(khoScratch)) == nil {
      throw ValidationError("--kho-scratch: \"\(khoScratch)\" is not a size (e.g. 64M)")
    }
  }

  func run() throws {
    LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
    let logger = Logger(label: "kho-cache")
    // Signals are taken by one thread with sigwait; block them before any
    // other thread starts so none of those gets them.
    Signals.block([SIGHUP, SIGTERM, SIGINT])

    let itemSizeMax = parseSize(maxItemSize)!
    let regionSize = CacheStore.regionSize(memoryLimit: memoryLimit << 20, itemSizeMax: itemSizeMax)
    let runtime = try HandoverRuntime.boot(khoOptions(regionSize: regionSize), logger: logger)
    let store = try obtainStore(
      runtime, regionSize: regionSize, itemSizeMax: itemSizeMax, logger: logger)
    try registerWithKHO(store, runtime.kho)

    var configuration = CacheServerConfiguration()
    configuration.maxConnections = ResourceLimits.fitOpenFileLimit(
      maxConnections: maxConnections, threads: threads)
    configuration.threads = threads
    let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
    let context = CacheServerContext(store: store, configuration: configuration)
    let listener = try listeningSocket(runtime)
    let channel = try CacheServer.bootstrap(group: group, context: context)
      .withBoundSocket(listener).wait()
    let upgrade = Upgrade(runtime: runtime, channel: channel, logger: logger)

    guard runtime.ready(status: "serving \(store.stats()["curr_items"]) items") else { exitNow(1) }
    let control = try startControlMount(runtime, upgrade)
    logger.info(
      "kho-cache: \(runtime.kho.isKHOBoot ? "took over" : "started cold with") \(store.stats()["curr_items"]) items, generation \(runtime.kho.generation), listening on \(listen):\(port)"
    )
    let image = NextImage(path: Self.executablePath, arguments: CommandLine.arguments)
    Signals.handle(
      hangup: {
        upgrade.inPlace(to: image, control: control)
      },
      terminate: {
        control?.unmount()
        exitNow(0)
      })
    try channel.closeFuture.wait()
  }

  /// The largest -m: its bytes, and the arena around them, must fit the
  /// address space (47 bits of user space on x86-64) with room to spare.
  static let memoryLimitMax = 64 << 20

  /// The path this process was started from: after the file is replaced by
  /// a new version, SIGHUP executes the new one.
  static let executablePath: String = {
    let argv0 = CommandLine.arguments[0]
    if argv0.hasPrefix("/") { return argv0 }
    if argv0.contains("/"), let cwd = getcwd(nil, 0) {
      defer { free(cwd) }
      return String(cString: cwd) + "/" + argv0
    }
    return NextImage.current().path
  }()

  func khoOptions(regionSize: Int) throws -> KHOOptions {
    let scratch: UInt64
    if let khoScratch {
      scratch = try KernelParsing.memparse(khoScratch).value
    } else if let env = getenv("KHO_SCRATCH") {
      scratch = try KernelParsing.memparse(String(cString: env)).value
    } else {
      scratch = 16 << 20
    }
    let page = hugePages ? ArenaPageSize.huge.bytes : ArenaPageSize.small.bytes
    let up = { (v: UInt64) in (v + page - 1) / page * page }
    return KHOOptions(
      arenaSize: up(UInt64(regionSize)) + up(scratch) + 4 * page, scratchSize: scratch,
      pageSize: hugePages ? .huge : .small, arenaName: "kho-cache")
  }

  /// The store: the one the previous image handed over, claimed and
  /// attached as it is (O(1), no per-item work); else a new one in fresh
  /// arena pages.
  func obtainStore(_ runtime: HandoverRuntime, regionSize: Int, itemSizeMax: Int, logger: Logger)
    throws
    -> CacheStore
  {
    let kho = runtime.kho
    if let incoming = kho.incoming, let node = incoming.findNode(compatible: CacheStore.compatible)
    {
      do {
        guard node.property("format-version")?.native(UInt32.self) == [CacheStore.formatVersion]
        else {
          throw ValidationError("format-version is not \(CacheStore.formatVersion)")
        }
        guard let mem = node.property("mem")?.native(UInt64.self), mem.count == 2 else {
          throw ValidationError("mem is not one {addr, len} pair")
        }
        let range = KHOMemoryRange(address: mem[0], length: mem[1])
        let bytes = try incoming.claim(range)
        let store = try CacheStore.attach(
          region: CacheRegion(base: bytes.baseAddress!, size: bytes.count))
        if bytes.count != regionSize {
          logger.notice(
            "kho-cache: keeping the handed-over store of \(bytes.count) bytes (options ask for \(regionSize))"
          )
        }
        return store
      } catch {
        logger.error("kho-cache: the handed-over store is unusable, starting empty: \(error)")
      }
    }
    let pages = try kho.allocator.allocate(bytes: UInt64(regionSize))
    let region = CacheRegion(base: kho.arena.base + Int(pages.lowerBound), size: regionSize)
    return try CacheStore.format(region: region, itemSizeMax: itemSizeMax)
  }

  /// The store's KHO node: DUMP freezes the store (mutations wait) and
  /// describes its region; ABORT thaws it.
  func registerWithKHO(_ store: CacheStore, _ kho: KHO) throws {
    // The store's offsets are from its region; KHO's are from the arena.
    let offset =
      UInt64(kho.arena.base.distance(to: store.region.base)) + UInt64(store.memoryRanges[0].offset)
    let length = UInt64(store.memoryRanges[0].length)
    try kho.outgoing.register(
      KHONotifier(
        name: "kho-cache",
        dump: { writer in
          store.freeze()
          try writer.beginNode("kho-cache")
          try writer.property("compatible", string: CacheStore.compatible)
          try writer.property("format-version", native: [CacheStore.formatVersion])
          try writer.property("mem", native: [offset, length])
          try writer.endNode()
        },
        abort: { store.unfreeze() }))
  }

  /// The listening socket: the one the previous image handed over, or a
  /// new one. Either way it is registered to be handed over next time.
  func listeningSocket(_ runtime: HandoverRuntime) throws -> NIOBSDSocket.Handle {
    let fd: Int32
    if let inherited = runtime.inherited["listen"] {
      fd = inherited
    } else {
      fd = try bindListeningSocket(host: listen, port: port)
    }
    try runtime.register(fd, name: "listen")
    return fd
  }

  func startControlMount(_ runtime: HandoverRuntime, _ upgrade: Upgrade) throws -> ServiceControl? {
    var path = controlMount
    if path == nil, let dir = getenv("RUNTIME_DIRECTORY") {
      path = String(cString: dir).split(separator: ":").first.map { "\($0)/kho" }
    }
    guard let path, path != "none" else { return nil }
    mkdir(path, 0o755)
    return try ServiceControl.start(
      runtime: runtime, mountPoint: path,
      hooks: .init(
        stopServing: { upgrade.pauseAccepting() },
        resumeServing: { upgrade.resumeAccepting() },
        committed: { exitNow(0) }))
  }
}

/// Hands the server over, off the event loops.
final class Upgrade: Sendable {
  let runtime: HandoverRuntime
  let channel: any Channel
  let logger: Logger

  init(runtime: HandoverRuntime, channel: any Channel, logger: Logger) {
    self.runtime = runtime
    self.channel = channel
    self.logger = logger
  }

  /// New connections wait in the backlog (for the next image).
  func pauseAccepting() {
    _ = try? channel.setOption(ChannelOptions.autoRead, value: false).wait()
  }

  func resumeAccepting() {
    _ = try? channel.setOption(ChannelOptions.autoRead, value: true).wait()
  }

  /// SIGHUP: in place, to `image`, taking the control mount along.
  func inPlace(to image: NextImage, control: ServiceControl?) {
    do {
      if let control {
        // Its hooks pause and resume accepting around the handover.
        _ = try control.handOver(to: image, mode: .inPlace)
      } else {
        pauseAccepting()
        do { _ = try runtime.handover(to: image, mode: .inPlace) } catch {
          resumeAccepting()
          throw error
        }
      }
    } catch {
      logger.error("kho-cache: upgrade failed, still serving: \(error)")
    }
  }
}

/// `socket`/`bind`/`listen` for a TCP listener, close-on-exec (the runtime
/// clears that flag only for the exec of a handover).
func bindListeningSocket(host: String, port: Int) throws -> Int32 {
  var hints = addrinfo()
  hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
  var result: UnsafeMutablePointer<addrinfo>?
  let rc = getaddrinfo(host, String(port), &hints, &result)
  guard rc == 0, let info = result else {
    throw ValidationError("cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
  }
  defer { freeaddrinfo(result) }
  let fd = socket(
    info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
  guard fd >= 0 else { throw ValidationError("socket: \(String(cString: strerror(errno)))") }
  var one: Int32 = 1
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
  guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0, listen(fd, 1024) == 0 else {
    let message = String(cString: strerror(errno))
    close(fd)
    throw ValidationError("cannot listen on \(host):\(port): \(message)")
  }
  return fd
}

/// memcached's size syntax for -I: a number with an optional k/m/g suffix.
func parseSize(_ text: String) -> Int? {
  guard let last = text.last else { return nil }
  let factors: [Character: Int] = [
    "k": 1 << 10, "K": 1 << 10, "m": 1 << 20, "M": 1 << 20, "g": 1 << 30, "G": 1 << 30,
  ]
  if let factor = factors[last] {
    return Int(text.dropLast()).map { $0 * factor }
  }
  return Int(text)
}

func exitNow(_ code: Int32) -> Never {
  fflush(nil)
  exit(code)
}
