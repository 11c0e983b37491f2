import KHOCacheServer
import KHOCacheStore
import NIOCore
import NIOEmbedded
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// Back-pressure: while the channel is not writable the connection runs no
/// command (a multi-get stops between keys) and reads nothing; when it is
/// writable again the rest follows, whole and in order.
@Suite struct BackPressureTests {
  let fixture: HandlerFixture

  init() throws {
    fixture = try HandlerFixture(storeSize: 4 << 20) { $0.outputFlushThreshold = 1000 }
  }

  var channel: EmbeddedChannel { fixture.channel }
  var store: CacheStore { fixture.store }
  func send(_ text: String) throws { try fixture.send(text) }
  func received() throws -> String { try fixture.received() }

  func setWritable(_ writable: Bool) {
    channel.isWritable = writable
    channel.pipeline.fireChannelWritabilityChanged()
    // The connection resumes from the event loop, not from inside the event.
    (channel.eventLoop as! EmbeddedEventLoop).run()
  }

  @Test func pausesBetweenKeysAndResumes() throws {
    let value = String(repeating: "v", count: 600)
    try send("set k 0 0 600\r\n\(value)\r\n")
    #expect(try received() == "STORED\r\n")
    setWritable(false)
    try send("get k k k\r\nversion\r\n")
    let item = "VALUE k 0 600\r\n\(value)\r\n"
    // Not writable: nothing runs (the reply so far is not even started).
    #expect(try received() == "")
    setWritable(true)
    // Each value passes the 1000-byte threshold every two keys: all of it
    // comes now, since the channel stays writable.
    #expect(try received() == item + item + item + "END\r\nVERSION 1.6.18-kho-cache\r\n")
  }

  @Test func stopsMidGetWhenTheChannelFills() throws {
    let value = String(repeating: "w", count: 600)
    try send("set k 0 0 600\r\n\(value)\r\n")
    _ = try received()
    // Writable until the first flush of the get (after two values), then full.
    let item = "VALUE k 0 600\r\n\(value)\r\n"
    try channel.pipeline.syncOperations.addHandler(FillAfterFirstWrite(), position: .first)
    try send("get k k k k\r\nversion\r\n")
    let first = try received()
    #expect(first == item + item)
    #expect(!first.contains("END"))
    setWritable(true)
    #expect(try received() == item + item + "END\r\nVERSION 1.6.18-kho-cache\r\n")
  }
}

/// Makes the embedded channel unwritable at the first write, as a socket
/// whose client does not read (once: after that it stays writable).
final class FillAfterFirstWrite: ChannelOutboundHandler {
  typealias OutboundIn = ByteBuffer
  var armed = true

  func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
    if armed {
      armed = false
      (context.channel as! EmbeddedChannel).isWritable = false
    }
    context.write(data, promise: promise)
  }
}
