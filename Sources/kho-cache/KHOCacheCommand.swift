import ArgumentParser
import KHOCacheServer
import KHOCacheStore
import NIOCore
import NIOPosix

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// `kho-cache`: a memcached-protocol cache server whose items live in one
/// memory region (for now an anonymous shared mapping; the KHO arena next).
@main
struct KHOCacheCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "kho-cache",
    abstract:
      "A memcached-compatible cache server (text protocol) that keeps its items in one memory region.",
    discussion: """
      Options follow memcached's: point any memcached client at --listen:--port.
      Items, the hash index and the LRU live in one region addressed by offsets,
      so that a next version of the server can take them over as they are.
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

  func validate() throws {
    guard let size = parseSize(maxItemSize), (1024...(1 << 30)).contains(size) else {
      throw ValidationError("--max-item-size must be between 1k and 1g, got \(maxItemSize)")
    }
    guard memoryLimit > 0 else { throw ValidationError("--memory-limit must be positive") }
    guard threads > 0 else { throw ValidationError("--threads must be positive") }
    guard maxConnections > 0 else { throw ValidationError("--max-connections must be positive") }
  }

  func run() throws {
    let itemSizeMax = parseSize(maxItemSize)!
    let region = try obtainRegion(
      size: CacheStore.regionSize(memoryLimit: memoryLimit << 20, itemSizeMax: itemSizeMax))
    let store = try CacheStore.format(region: region, itemSizeMax: itemSizeMax)
    var configuration = CacheServerConfiguration()
    configuration.maxConnections = maxConnections
    configuration.threads = threads
    let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
    let context = CacheServerContext(store: store, configuration: configuration)
    let channel = try listeningChannel(CacheServer.bootstrap(group: group, context: context))
    try channel.closeFuture.wait()
  }

  /// Where the store's memory comes from. Today: an anonymous shared
  /// mapping, lost at exit. To be replaced by a KHO arena range.
  func obtainRegion(size: Int) throws -> CacheRegion {
    let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
    guard let base, base != MAP_FAILED else {
      throw ValidationError("cannot map \(size) bytes for the cache: errno \(errno)")
    }
    return CacheRegion(base: base, size: size)
  }

  /// The listening socket. Today: bound here. To be replaced by an
  /// inherited socket (`bootstrap.withBoundSocket(fd)`) after a handover.
  func listeningChannel(_ bootstrap: ServerBootstrap) throws -> any Channel {
    try bootstrap.bind(host: listen, port: port).wait()
  }
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
