import KHOCacheServer
import KHOCacheStore
import NIOCore
import NIOEmbedded
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The protocol side of a freeze: mutations wait (reads do not), then
/// complete on unfreeze, or fail after the limit.
@Suite struct FreezeTests {
  let fixture: HandlerFixture

  init() throws {
    fixture = try HandlerFixture(storeSize: 2 << 20) { $0.frozenWaitLimit = .seconds(1) }
  }

  var channel: EmbeddedChannel { fixture.channel }
  var store: CacheStore { fixture.store }
  func send(_ text: String) throws { try fixture.send(text) }
  func received() throws -> String { try fixture.received() }

  @Test func mutationWaitsForUnfreeze() throws {
    try send("set a 0 0 1\r\nx\r\n")
    #expect(try received() == "STORED\r\n")
    store.freeze()
    try send("get a\r\nset a 0 0 1\r\ny\r\nget a\r\n")
    // The read before the mutation is answered; the mutation and what follows wait.
    #expect(try received() == "VALUE a 0 1\r\nx\r\nEND\r\n")
    (channel.eventLoop as! EmbeddedEventLoop).advanceTime(by: .milliseconds(10))
    #expect(try received() == "")
    store.unfreeze()
    (channel.eventLoop as! EmbeddedEventLoop).advanceTime(by: .milliseconds(2))
    #expect(try received() == "STORED\r\nVALUE a 0 1\r\ny\r\nEND\r\n")
  }

  @Test func mutationFailsAfterTheLimit() throws {
    store.freeze()
    try send("delete a\r\nversion\r\n")
    let loop = channel.eventLoop as! EmbeddedEventLoop
    for _ in 0..<1100 { loop.advanceTime(by: .milliseconds(1)) }
    let text = try received()
    #expect(text.hasPrefix("SERVER_ERROR frozen for handover\r\nVERSION "))
  }

  /// A frozen store delays a pipeline by the wait limit once, not once per
  /// mutation: three sets and a get are all answered just after one limit.
  @Test func pipelinedMutationsWaitOnce() throws {
    store.freeze()
    try send("set a 0 0 1\r\nx\r\nset b 0 0 1\r\ny\r\nset c 0 0 1\r\nz\r\nget a\r\n")
    let loop = channel.eventLoop as! EmbeddedEventLoop
    // The limit is 1 s; a little more than that, in retry-sized steps.
    for _ in 0..<1010 { loop.advanceTime(by: .milliseconds(1)) }
    let error = "SERVER_ERROR frozen for handover\r\n"
    #expect(try received() == error + error + error + "END\r\n")
  }

  /// A command sent after the connection had consumed all its input gets a
  /// wait of its own; one that finds the store thawed resets the wait.
  @Test func laterCommandsWaitAgain() throws {
    store.freeze()
    let loop = channel.eventLoop as! EmbeddedEventLoop
    try send("delete a\r\n")
    for _ in 0..<1010 { loop.advanceTime(by: .milliseconds(1)) }
    #expect(try received() == "SERVER_ERROR frozen for handover\r\n")
    try send("set a 0 0 1\r\nx\r\n")
    loop.advanceTime(by: .milliseconds(10))
    #expect(try received() == "")
    store.unfreeze()
    loop.advanceTime(by: .milliseconds(2))
    #expect(try received() == "STORED\r\n")
  }
}
