import KHOCacheServer
import KHOCacheStore
import NIOCore
import NIOEmbedded
import Testing

/// The short paths of a request: a storage command whose data block came
/// with its line is stored in place, tokens past the first eight go to an
/// array, a hit's VALUE block is written in one go, and flushes reuse the
/// output buffer. Each must answer exactly as the general path does.
@Suite struct ReplyPathTests {
  let fixture: HandlerFixture

  init() throws {
    fixture = try HandlerFixture(storeSize: 4 << 20) { _ in }
  }

  func send(_ text: String) throws { try fixture.send(text) }
  func received() throws -> String { try fixture.received() }

  @Test func dataWithTheLineOrLaterStoresTheSame() throws {
    // In one read (stored in place), then split after the line, then split
    // inside the data block, then the "\r\n" alone.
    try send("set a 1 0 3\r\nabc\r\n")
    #expect(try received() == "STORED\r\n")
    try send("set b 2 0 3\r\n")
    #expect(try received() == "")
    try send("def\r\n")
    #expect(try received() == "STORED\r\n")
    try send("set c 3 0 3\r\nab")
    try send("c\r\n")
    #expect(try received() == "STORED\r\n")
    try send("set d 4 0 3\r\nabc")
    try send("\r\n")
    #expect(try received() == "STORED\r\n")
    try send("get a b c d\r\n")
    #expect(
      try received()
        == "VALUE a 1 3\r\nabc\r\nVALUE b 2 3\r\ndef\r\nVALUE c 3 3\r\nabc\r\nVALUE d 4 3\r\nabc\r\nEND\r\n"
    )
  }

  @Test func badDataChunkEitherWay() throws {
    try send("set a 0 0 3\r\nabcd\r\n")
    // memcached: the block is taken as 3 bytes + "d\r"; then "\n" is a line.
    let inPlace = try received()
    try send("set a 0 0 3\r\n")
    try send("abcd\r\n")
    #expect(try received() == inPlace)
    #expect(inPlace.hasPrefix("CLIENT_ERROR bad data chunk\r\n"))
  }

  @Test func noreplyAndPipelinedStores() throws {
    try send("set a 0 0 1 noreply\r\nx\r\nadd a 0 0 1\r\ny\r\nappend a 0 0 1\r\nz\r\nget a\r\n")
    #expect(try received() == "NOT_STORED\r\nSTORED\r\nVALUE a 0 2\r\nxz\r\nEND\r\n")
  }

  @Test func multiGetPastTheInlineTokens() throws {
    var line = "get"
    var expected = ""
    for index in 0..<20 {
      try send("set k\(index) \(index) 0 2\r\nv\(index % 10)\r\n")
      line += " k\(index)"
      expected += "VALUE k\(index) \(index) 2\r\nv\(index % 10)\r\n"
    }
    _ = try received()
    try send(line + " missing\r\n")
    #expect(try received() == expected + "END\r\n")
  }

  @Test func getsWritesFlagsLengthAndCas() throws {
    try send("set a 4294967295 0 0\r\n\r\ngets a\r\n")
    let reply = try received()
    #expect(reply.hasPrefix("STORED\r\nVALUE a 4294967295 0 "))
    #expect(reply.hasSuffix("\r\n\r\nEND\r\n"))
    let cas = reply.dropFirst("STORED\r\nVALUE a 4294967295 0 ".count).prefix { $0.isNumber }
    #expect(!cas.isEmpty && UInt64(cas) != nil)
  }

  @Test func manyFlushesInARow() throws {
    for index in 0..<200 {
      try send("set k 0 0 \(String(index).count)\r\n\(index)\r\nget k\r\n")
      #expect(try received() == "STORED\r\nVALUE k 0 \(String(index).count)\r\n\(index)\r\nEND\r\n")
    }
  }
}
