import KHOCacheServer
import KHOCacheStore
import NIOCore
import NIOEmbedded
import Testing

/// memcached's `-R`: a connection runs at most `requestsPerEvent` commands
/// of one read, then lets its event loop's other connections run, and goes
/// on from a queued task, with every reply whole and in order. And `-F`.
@Suite struct RequestsPerEventTests {
  let fixture: HandlerFixture

  init() throws {
    fixture = try HandlerFixture(storeSize: 4 << 20) {
      $0.requestsPerEvent = 2
      $0.flushEnabled = false
    }
  }

  var loop: EmbeddedEventLoop { fixture.channel.eventLoop as! EmbeddedEventLoop }

  func stat(_ name: String) throws -> String? {
    try fixture.send("stats\r\n")
    loop.run()
    let lines = try fixture.received().split(separator: "\r\n")
    return lines.first { $0.hasPrefix("STAT \(name) ") }.map { String($0.split(separator: " ")[2]) }
  }

  @Test func yieldsAfterTheLimitAndAnswersEverything() throws {
    // Five sets in one read: two run, then a yield, and so on.
    try fixture.send(String(repeating: "set k 0 0 1\r\nv\r\n", count: 5) + "get k\r\n")
    var replies = try fixture.received()
    #expect(!replies.contains("END"), "ran past -R without yielding: \(replies)")
    loop.run()
    replies += try fixture.received()
    #expect(replies == String(repeating: "STORED\r\n", count: 5) + "VALUE k 0 1\r\nv\r\nEND\r\n")
    #expect(try stat("conn_yields") == "2")
    try fixture.send("stats reset\r\n")
    #expect(try fixture.received() == "RESET\r\n")
    #expect(try stat("conn_yields") == "0")
  }

  @Test func aDataBlockIsPartOfItsCommand() throws {
    // A storage command counts once, with its data block: two sets and
    // nothing else in the read, so nothing is left to yield for.
    try fixture.send("set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\n")
    #expect(try fixture.received() == "STORED\r\nSTORED\r\n")
    #expect(try stat("conn_yields") == "0")
  }

  @Test func flushAllIsRefusedWithF() throws {
    try fixture.send("set a 0 0 1\r\n1\r\nflush_all\r\n")
    loop.run()
    #expect(try fixture.received() == "STORED\r\nCLIENT_ERROR flush_all not allowed\r\n")
    #expect(fixture.store.get("a")?.value == Array("1".utf8))
    #expect(try stat("cmd_flush") == "1")
  }
}
