import Testing

@testable import KHO

@Suite struct HandoverRecordTests {
  let record = HandoverRecord(
    arenaSize: 1 << 30, pageSize: 4096, generation: 3, scratch: 0x10_0000..<0x50_0000,
    blob: 0x10_2000..<0x10_2100, memCacheAddress: 0x10_1000, memCacheCount: 4)

  @Test func roundTrips() throws {
    var r = record
    r.checksum = 0x1234
    let bytes = r.encoded()
    #expect(bytes.count == HandoverRecord.size)
    let decoded = try bytes.withUnsafeBytes { try HandoverRecord.decode($0) }
    #expect(decoded == r)
    try decoded.validate(arenaSize: 1 << 30, pageSize: 4096)
  }

  @Test func refusesBadMagicVersionAndSize() throws {
    for (offset, value) in [(0, UInt8(0)), (8, 2), (12, 64)] {
      var bytes = record.encoded()
      bytes[offset] = value
      #expect(throws: HandoverError.self) {
        try bytes.withUnsafeBytes { try HandoverRecord.decode($0) }
      }
    }
    let short = Array(record.encoded().prefix(100))
    #expect(throws: HandoverError.self) {
      try short.withUnsafeBytes { try HandoverRecord.decode($0) }
    }
  }

  @Test func refusesOverflowingRanges() {
    var bytes = record.encoded()
    bytes.withUnsafeMutableBytes {
      $0.storeBytes(of: UInt64.max, toByteOffset: 48, as: UInt64.self)
    }
    #expect(throws: HandoverError.self) {
      try bytes.withUnsafeBytes { try HandoverRecord.decode($0) }
    }
  }

  @Test func validationChecksPlacement() {
    var r = record
    #expect(throws: HandoverError.self) { try r.validate(arenaSize: 1 << 29, pageSize: 4096) }
    #expect(throws: HandoverError.self) { try r.validate(arenaSize: 1 << 30, pageSize: 2 << 20) }
    r.blob = 0x60_0000..<0x60_0100
    #expect(throws: HandoverError.self) { try r.validate(arenaSize: 1 << 30, pageSize: 4096) }
    r = record
    r.memCacheCount = UInt64.max / 8
    #expect(throws: HandoverError.self) { try r.validate(arenaSize: 1 << 30, pageSize: 4096) }
    r = record
    r.scratch = 0x10_0001..<0x50_0000
    #expect(throws: HandoverError.self) { try r.validate(arenaSize: 1 << 30, pageSize: 4096) }
  }

  @Test func locationParsesItsOwnDescription() throws {
    let location = HandoverLocation(fd: 7, arenaSize: 0x4000_0000, recordAddress: 0x10_0000)
    #expect(location.description == "v1,fd=7,size=0x40000000,record=0x100000")
    #expect(try HandoverLocation(parsing: location.description) == location)
  }

  @Test(arguments: [
    "", "v2,fd=1,size=0x1,record=0x1", "v1,fd=x,size=0x1,record=0x1", "v1,fd=1,size=1,record=0x1",
    "v1,fd=1,size=0x1", "v1,fd=1,size=0x1,record=0x1,extra=1", "v1,fd=-1,size=0x1,record=0x1",
    "v1,fd=1,fd=2,size=0x1,record=0x1", "v1,fd=1,size=0xzz,record=0x1",
  ])
  func locationRefusesMalformed(_ text: String) {
    #expect(throws: HandoverError.self) { try HandoverLocation(parsing: text) }
  }
}

@Suite struct HandoverRecordLayoutTests {
  /// The offsets are an ABI between two images of possibly different
  /// builds: pin them.
  @Test func fieldOffsetsAreTheDocumentedOnes() {
    typealias F = HandoverRecord.Field
    #expect(
      [F.magic, F.version, F.recordSize, F.arenaSize, F.pageSize, F.generation]
        == [0, 8, 12, 16, 24, 32])
    #expect(
      [F.scratchAddress, F.scratchSize, F.blobAddress, F.blobSize, F.memCacheAddress]
        == [40, 48, 56, 64, 72])
    #expect([F.memCacheCount, F.checksum] == [80, 88])
    #expect(HandoverRecord.size == 128)
  }
}
