import KHOCacheStore
import KHOSystem
import Testing

@testable import KHOCacheServer

/// The records a connection hands to the next image: what is written is
/// read back exactly, and anything malformed is refused whole.
@Suite struct ConnectionRecordsTests {
  static func sample() -> [ConnectionSnapshot] {
    var idle = ConnectionSnapshot()
    idle.peer = [2, 0, 0x30, 0x39, 127, 0, 0, 1]
    var busy = ConnectionSnapshot()
    busy.peer = [2, 0, 0x30, 0x3a, 127, 0, 0, 1]
    busy.input = Array("half of a data blo".utf8)
    busy.output = Array("STORED\r\nVALUE k 0 1\r\n".utf8)
    busy.swallow = 7
    busy.retrieveResumeIndex = 3
    busy.pending = PendingStore(
      mode: .cas(42), key: Array("key".utf8), flags: 9, exptime: -1, length: 100, noreply: true)
    return [idle, busy]
  }

  /// Each loop's report becomes one blob: the busy connections of every
  /// loop first, the most recently active first, then each loop's idle
  /// ones as it encoded them; descriptor i is record i's.
  @Test func frozenConnectionsPutTheBusiestFirst() {
    func snapshot(_ port: UInt8) -> ConnectionSnapshot {
      var s = ConnectionSnapshot()
      s.peer = [2, 0, 0x30, port, 127, 0, 0, 1]
      return s
    }
    func fd(_ n: Int32) -> KHOSystem.FileDescriptor { KHOSystem.FileDescriptor(rawValue: n) }
    var first = HandoverFreeze.LoopReport()
    first.busy = [.init(snapshot: snapshot(1), descriptor: fd(101), recency: 5)]
    ConnectionRecords.encode(snapshot(2), into: &first.idleRecords)
    first.idleDescriptors = [fd(102)]
    var second = HandoverFreeze.LoopReport()
    second.busy = [.init(snapshot: snapshot(3), descriptor: fd(103), recency: 9)]
    ConnectionRecords.encode(snapshot(4), into: &second.idleRecords)
    ConnectionRecords.encode(snapshot(5), into: &second.idleRecords)
    second.idleDescriptors = [fd(104), fd(105)]

    let frozen = FrozenConnections([first, second])
    #expect(frozen.descriptors.map(\.rawValue) == [103, 101, 102, 104, 105])
    let decoded = ConnectionRecords.decode(frozen.records, maxCount: 10)
    #expect(decoded?.map { $0.peer[3] } == [3, 1, 2, 4, 5])
    #expect(FrozenConnections([]).descriptors.isEmpty)
    #expect(ConnectionRecords.decode(FrozenConnections([]).records, maxCount: 0) == [])
  }

  @Test func roundTrip() {
    let snapshots = Self.sample()
    let bytes = ConnectionRecords.encode(snapshots)
    #expect(ConnectionRecords.decode(bytes, maxCount: 10) == snapshots)
  }

  @Test func truncatedOrExtendedRecordsAreRefused() {
    let bytes = ConnectionRecords.encode(Self.sample())
    for cut in stride(from: 0, to: bytes.count, by: 3) {
      #expect(ConnectionRecords.decode(Array(bytes.prefix(cut)), maxCount: 10) == nil)
    }
    #expect(ConnectionRecords.decode(bytes + [0], maxCount: 10) == nil)
  }

  @Test func moreRecordsThanAllowedAreRefused() {
    let bytes = ConnectionRecords.encode(Self.sample())
    #expect(ConnectionRecords.decode(bytes, maxCount: 1) == nil)
  }

  @Test func wrongMagicAndHugeLengthsAreRefused() {
    var bytes = ConnectionRecords.encode(Self.sample())
    bytes[0] ^= 0xff
    #expect(ConnectionRecords.decode(bytes, maxCount: 10) == nil)
    // A key longer than memcached allows, in an otherwise valid record.
    var long = Self.sample()
    long[1].pending!.key = Array(repeating: UInt8(ascii: "k"), count: 251)
    #expect(ConnectionRecords.decode(ConnectionRecords.encode(long), maxCount: 10) == nil)
    // A length field claiming more than the blob holds.
    var claimed = ConnectionRecords.encode([ConnectionSnapshot()])
    let peerLengthOffset = 8 + 8 + 8 + 8 + 1
    claimed[peerLengthOffset + 7] = 0x7f
    #expect(ConnectionRecords.decode(claimed, maxCount: 10) == nil)
  }
}
