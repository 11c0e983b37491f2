import KHOCacheServer
import KHOCacheStore
import NIOCore
import NIOEmbedded

#if canImport(Glibc)
  import Glibc
#endif

/// One connection of a `MemcacheHandler` in an `EmbeddedChannel`, over a
/// store in anonymous shared memory: what the server tests drive.
struct HandlerFixture {
  let channel = EmbeddedChannel()
  let store: CacheStore

  init(storeSize: Int, configure: (inout CacheServerConfiguration) -> Void) throws {
    let base = mmap(nil, storeSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)!
    store = try CacheStore.format(
      region: CacheRegion(base: base, size: storeSize), itemSizeMax: 64 << 10)
    var configuration = CacheServerConfiguration()
    configure(&configuration)
    let context = CacheServerContext(store: store, configuration: configuration)
    try channel.pipeline.syncOperations.addHandler(MemcacheHandler(context: context))
    try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
  }

  /// Delivers `text` as one read.
  func send(_ text: String) throws {
    try channel.writeInbound(channel.allocator.buffer(string: text))
  }

  /// Everything written to the client since the last call.
  func received() throws -> String {
    var text = ""
    while var buffer = try channel.readOutbound(as: ByteBuffer.self) {
      text += buffer.readString(length: buffer.readableBytes)!
    }
    return text
  }
}
