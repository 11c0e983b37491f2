import ArgumentParser
import FDT
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
      that connect meanwhile wait in its backlog. So is every established
      client connection, with what it had sent and not yet been answered.
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
    name: [.customShort("n"), .customLong("slab-min-size")],
    help: """
      Minimum item space in bytes (key, value and flags) of the smallest size class, as \
      memcached's -n. Fixed when the store is formatted: a store handed over keeps its own.
      """)
  var slabMinSize: String = "48"

  @Option(
    name: [.customShort("f"), .customLong("slab-growth-factor")],
    help: """
      Chunk size growth factor between size classes, above 1, as memcached's -f. Fixed when \
      the store is formatted: a store handed over keeps its own.
      """)
  var slabGrowthFactor: String = "1.25"

  @Option(
    name: [.customShort("R"), .customLong("max-reqs-per-event")],
    help: """
      Commands a connection runs in a row before the other connections of its thread get \
      their turn, as memcached's -R (counted in stats conn_yields).
      """)
  var maxRequestsPerEvent: String = "20"

  @Flag(
    name: [.customShort("F"), .customLong("disable-flush-all")],
    help: "Refuse flush_all (CLIENT_ERROR flush_all not allowed), as memcached's -F.")
  var disableFlushAll = false

  @Option(
    name: .customLong("kho-scratch"),
    help: """
      Size of the KHO scratch region, with the kernel's memparse syntax (512K, 64M, 1G...). \
      Defaults to $KHO_SCRATCH, else 16M. 0 disables handover (KHO refuses to activate).
      """)
  var khoScratch: String?

  @Flag(
    name: [.customShort("A"), .customLong("enable-shutdown")],
    help: "Let the shutdown command stop the server, as memcached's -A.")
  var enableShutdown = false

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
    // memcached's own words for its checks ("Factor must be greater than
    // 1", "Chunk size must be greater than 0"), with the value given.
    guard let factor = Double(slabGrowthFactor), factor.isFinite, factor > 1 else {
      throw ValidationError(
        "-f/--slab-growth-factor: factor must be greater than 1, got \(slabGrowthFactor)")
    }
    guard let chunkSpace = Int(slabMinSize), chunkSpace > 0 else {
      throw ValidationError(
        "-n/--slab-min-size: chunk size must be greater than 0, got \(slabMinSize)")
    }
    let itemSizeMax = parseSize(maxItemSize)!
    guard chunkSpace <= itemSizeMax else {
      throw ValidationError(
        "-n/--slab-min-size \(chunkSpace) is larger than the largest item (-I \(maxItemSize))")
    }
    guard let requests = Int(maxRequestsPerEvent), requests > 0 else {
      throw ValidationError(
        "-R/--max-reqs-per-event: number of requests per event must be greater than 0, got \(maxRequestsPerEvent)"
      )
    }
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
    HandoverTrace.stamp("new: main")
    let runtime = try HandoverRuntime.boot(khoOptions(regionSize: regionSize), logger: logger)
    // Prepare all that can be prepared while an overlapped predecessor
    // still serves: validate and claim its store, start the event loops,
    // take the listener (not accepting yet). Nothing handed over is read
    // or written before ready() says the predecessor froze and let go.
    let handedOver = claimStore(runtime, logger: logger)
    let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
    let listener = try listeningSocket(runtime, logger: logger)
    var configuration = CacheServerConfiguration()
    configuration.maxConnections = ResourceLimits.fitOpenFileLimit(
      maxConnections: maxConnections, threads: threads)
    configuration.threads = threads
    configuration.tcpPort = port
    configuration.listenAddress = listen
    configuration.shutdownEnabled = enableShutdown
    configuration.flushEnabled = !disableFlushAll
    configuration.requestsPerEvent = Int(maxRequestsPerEvent)!
    configuration.reservedDescriptors = ResourceLimits.descriptorHeadroom(threads: threads)
    if runtime.predecessorStillServes {
      // Connections will be handed over: pay the first adoption's costs
      // while the predecessor still serves (in place they would only move).
      ConnectionAdoption.warmUp(group: group, configuration: configuration)
    }
    guard runtime.ready(status: "starting") else { exitNow(1) }

    let adopted = handedOver.flatMap { attachStore($0, runtime, logger: logger) }
    let store =
      try adopted
      ?? freshStore(runtime, regionSize: regionSize, itemSizeMax: itemSizeMax, logger: logger)
    HandoverTrace.stamp("new: attached")
    if adopted != nil { noteKeptGeometry(store, itemSizeMax: itemSizeMax, logger: logger) }
    if FaultInjection.isArmed {
      store.setCrashHook { FaultInjection.reach($0) }
    }
    try registerWithKHO(store, runtime.kho)
    preserveAcrossCrash(store, runtime.kho, logger: logger)

    let context = CacheServerContext(store: store, configuration: configuration)
    HandoverTrace.stamp("new: context")
    try ConnectionHandover.register(context, runtime, logger: logger)
    // The handed-over connections first: their clients were there before
    // any new one (and their replies go out first).
    let adoption = ConnectionHandover.adopt(runtime, group: group, context: context, logger: logger)
    HandoverTrace.stamp("new: adopting")
    let channel = try CacheServer.bootstrap(group: group, context: context)
      .withBoundSocket(listener).wait()
    try? adoption?.wait()
    HandoverTrace.stamp("new: adopted")
    let items = store.stats()["curr_items"]
    let upgrade = Upgrade(runtime: runtime, channel: channel, logger: logger)
    try? runtime.notifier.status("serving \(items) items")
    HandoverTrace.stamp("new: listening")
    let control = try startControlMount(runtime, upgrade)
    HandoverTrace.stamp("new: mounted")
    logger.info(
      "kho-cache: \(adopted != nil ? "took over" : "started cold with") \(items) items, generation \(runtime.kho.generation), listening on \(listen):\(port)"
    )
    let image = NextImage(path: Self.executablePath, arguments: CommandLine.arguments)
    Signals.handle(
      hangup: {
        upgrade.inPlace(to: image, control: control)
      },
      terminate: {
        control?.unmount()
        exitNow(0)
      }, logger: logger)
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

  /// The handed-over store's memory, claimed: its node is found and
  /// checked, and its range taken from the incoming mem cache. Its bytes
  /// are not touched (an overlapped predecessor may still be using them).
  /// nil after a cold start, or when the node is refused (logged with the
  /// reason; unclaimed memory is returned by `ready()`).
  ///
  /// The version rule: a node is recognised by its name or by a
  /// `kho-cache-v*` compatible string, and adopted only if its
  /// `format-version` is the one this build writes. A store of an older or a
  /// newer format is never guessed at: this image starts empty (a downgrade
  /// or an upgrade across a layout change is a cold start), and says so.
  func claimStore(_ runtime: HandoverRuntime, logger: Logger) -> ClaimedStore? {
    guard let incoming = runtime.kho.incoming else { return nil }
    if incoming.kind == .crash {
      // The store region is the sub-blob, self-describing (its header has
      // the magic, format version and geometry that attach checks).
      guard let range = incoming.retrieveSubtree(Self.subtreeName) else {
        logger.notice("kho-cache: the crashed image preserved no store, starting empty")
        return nil
      }
      do {
        return ClaimedStore(range: range, bytes: try incoming.claim(range), afterCrash: true)
      } catch {
        logger.error("kho-cache: refusing the store the crashed image preserved: \(error)")
        return nil
      }
    }
    guard let node = Self.storeNode(incoming) else {
      logger.notice("kho-cache: the previous image handed over no store, starting empty")
      return nil
    }
    do {
      let compatible = node.property("compatible")?.strings ?? []
      guard compatible.contains(CacheStore.compatible) else {
        throw AdoptionRefusal(
          "compatible is \(compatible), this build reads \(CacheStore.compatible)")
      }
      let version = node.property("format-version")?.native(UInt32.self)
      guard let version, version.count == 1 else {
        throw AdoptionRefusal("format-version is missing or not one u32")
      }
      guard version[0] == CacheStore.formatVersion else {
        let relation = version[0] < CacheStore.formatVersion ? "older" : "newer"
        throw AdoptionRefusal(
          "format-version \(version[0]) is \(relation) than this build's \(CacheStore.formatVersion)"
        )
      }
      guard let mem = node.property("mem")?.native(UInt64.self), mem.count == 2 else {
        throw AdoptionRefusal("mem is not one {addr, len} pair")
      }
      let range = KHOMemoryRange(address: mem[0], length: mem[1])
      return ClaimedStore(range: range, bytes: try incoming.claim(range), afterCrash: false)
    } catch {
      logger.error("kho-cache: refusing the handed-over store, starting empty: \(error)")
      return nil
    }
  }

  /// Attaches the claimed store as it is (O(1), no per-item work), once
  /// the predecessor has let go. A store that fails its checks is refused,
  /// logged, and its memory returned, so that a fresh store fits.
  func attachStore(_ claimed: ClaimedStore, _ runtime: HandoverRuntime, logger: Logger)
    -> CacheStore?
  {
    do {
      // After a crash nobody froze the store: it may have been cut in the
      // middle of a mutation, and attach checks it as such.
      let store = try CacheStore.attach(
        region: CacheRegion(base: claimed.bytes.baseAddress!, size: claimed.bytes.count),
        requireFrozen: !claimed.afterCrash,
        damageHandler: { [logger] damage in
          logger.warning("kho-cache: damage in the adopted store, cut away: \(damage)")
        })
      logger.info(
        "kho-cache: adopted the \(claimed.afterCrash ? "crashed image's" : "handed-over") store of \(claimed.bytes.count) bytes"
      )
      return store
    } catch {
      logger.error("kho-cache: refusing the handed-over store, starting empty: \(error)")
      do { try runtime.kho.incoming?.returnMemory(claimed.range) } catch {
        logger.error("kho-cache: returning the refused store's memory: \(error)")
      }
      return nil
    }
  }

  /// The store's node in the incoming tree: `/kho-cache`, or any node whose
  /// compatible names a kho-cache format.
  static func storeNode(_ incoming: KHOIncoming) -> FDTNode? {
    incoming.findNode(path: "/kho-cache")
      ?? incoming.findNode { node in
        node.property("compatible")?.strings?.contains { $0.hasPrefix("kho-cache-v") } == true
      }
  }

  /// A new, empty store in fresh arena pages: the size the options ask
  /// for, or, when a handed-over arena is smaller than that, the largest
  /// free run it has (logged; a cold start sizes the arena anew).
  func freshStore(_ runtime: HandoverRuntime, regionSize: Int, itemSizeMax: Int, logger: Logger)
    throws -> CacheStore
  {
    let kho = runtime.kho
    var size = UInt64(regionSize)
    let largest = kho.allocator.fragmentation.largestFreeRun
    if largest < size {
      logger.notice(
        "kho-cache: the arena has \(largest) free bytes in one run, less than the \(size) asked for; the store is smaller until the next cold start"
      )
      size = largest
    }
    let pages = try kho.allocator.allocate(bytes: size)
    let region = CacheRegion(
      base: kho.arena.base + Int(pages.lowerBound), size: Int(pages.upperBound - pages.lowerBound))
    return try CacheStore.format(region: region, itemSizeMax: itemSizeMax, sizeClasses: sizeClasses)
  }

  /// -n and -f as given (validated).
  var sizeClasses: SizeClasses {
    SizeClasses(chunkSpace: Int(slabMinSize)!, growthFactor: Double(slabGrowthFactor)!)
  }

  /// A store handed over keeps the size classes and item size limit it was
  /// formatted with: its items sit in chunks of those sizes, so changing
  /// them would mean moving every item. Options that differ are said in
  /// the log (and `stats settings` shows the store's); they apply at the
  /// next cold start.
  func noteKeptGeometry(_ store: CacheStore, itemSizeMax: Int, logger: Logger) {
    let kept = store.sizeClasses
    if kept != sizeClasses || store.itemSizeMax != itemSizeMax {
      logger.notice(
        "kho-cache: the adopted store keeps its geometry (-n \(kept.chunkSpace) -f \(kept.growthFactor) -I \(store.itemSizeMax)); -n \(slabMinSize) -f \(slabGrowthFactor) -I \(maxItemSize) apply from the next cold start"
      )
    }
  }

  /// The store's KHO node. DUMP describes the store's region, which never
  /// moves, and the store goes on serving; FREEZE, the last moment before
  /// the next image takes over, freezes it (mutations wait, reads go on);
  /// UNFREEZE and ABORT thaw it.
  func registerWithKHO(_ store: CacheStore, _ kho: KHO) throws {
    let range = Self.arenaRange(of: store, in: kho)
    let offset = range.lowerBound
    let length = UInt64(range.count)
    try kho.outgoing.register(
      KHONotifier(
        name: "kho-cache",
        dump: { writer in
          try writer.beginNode("kho-cache")
          try writer.property("compatible", string: CacheStore.compatible)
          try writer.property("format-version", native: [CacheStore.formatVersion])
          try writer.property("mem", native: [offset, length])
          try writer.endNode()
        },
        abort: { store.unfreeze() },
        freeze: { store.freeze() },
        unfreeze: { store.unfreeze() }))
  }

  /// The arena offsets of the store's memory (its offsets are from its
  /// region; KHO's are from the arena).
  static func arenaRange(of store: CacheStore, in kho: KHO) -> Range<UInt64> {
    let start =
      UInt64(kho.arena.base.distance(to: store.region.base)) + UInt64(store.memoryRanges[0].offset)
    return start..<start + UInt64(store.memoryRanges[0].length)
  }

  /// The name of the store's sub-blob in the stateless description.
  static let subtreeName = "kho-cache"

  /// Preserves the store's region statelessly and names it, so that a
  /// crash of this process (kill -9, a segfault, the OOM killer) leaves it
  /// to the next start, through a keeper that holds the arena.
  func preserveAcrossCrash(_ store: CacheStore, _ kho: KHO, logger: Logger) {
    guard let preservation = kho.preservation else { return }
    let range = Self.arenaRange(of: store, in: kho)
    do {
      try preservation.preserve(range)
      try preservation.addSubtree(Self.subtreeName, at: range)
    } catch {
      logger.error("kho-cache: the store will not survive a crash: \(error)")
    }
  }

  /// The listening socket: the one the previous image handed over (by
  /// name, or recognised by its address among fds handed over without a
  /// usable name), or a new one. Either way it is registered to be handed
  /// over next time.
  func listeningSocket(_ runtime: HandoverRuntime, logger: Logger) throws -> NIOBSDSocket.Handle {
    let fd: Int32
    if let inherited = runtime.inherited["listen"], isListeningSocket(inherited, port: port) {
      fd = inherited
    } else if let found = runtime.strayInherited.first(where: { isListeningSocket($0, port: port) })
    {
      logger.notice("kho-cache: taking over the unnamed listening socket fd \(found)")
      fd = found
    } else {
      if let inherited = runtime.inherited["listen"] {
        logger.error(
          "kho-cache: the handed-over fd \(inherited) named listen is not listening on port \(port)"
        )
      }
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
        committed: {
          HandoverTrace.stamp("old: exit")
          exitNow(0)
        }))
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
  do {
    return try FileDescriptor.listeningTCPSocket(
      family: info.pointee.ai_family, address: info.pointee.ai_addr,
      length: info.pointee.ai_addrlen, backlog: 1024
    ).rawValue
  } catch {
    throw ValidationError("cannot listen on \(host):\(port): \(error)")
  }
}

/// Whether `fd` is a TCP socket listening on `port` (`getsockopt`
/// SO_ACCEPTCONN, `getsockname`).
func isListeningSocket(_ fd: Int32, port: Int) -> Bool {
  let descriptor = FileDescriptor(rawValue: fd)
  guard (try? descriptor.isListening()) == true else { return false }
  return (try? descriptor.localPort()) == port
}

/// A handed-over store's memory, claimed but not yet read.
struct ClaimedStore {
  var range: KHOMemoryRange
  var bytes: UnsafeMutableRawBufferPointer
  /// Left by an image that died rather than handed over.
  var afterCrash: Bool
}

/// Why a handed-over store was refused.
struct AdoptionRefusal: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
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
