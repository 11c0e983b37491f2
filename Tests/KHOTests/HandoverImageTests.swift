import FDT
import Testing

@testable import KHO

@Suite struct HandoverImageTests {
  let page: UInt64 = 4096
  let scratch: Range<UInt64> = 0x10_0000..<0x20_0000

  func kho(compatible: String = "kho-v1", mem: [UInt64] = [0x1000, 0x3000]) throws -> [UInt8] {
    var w = FDTWriter()
    try w.beginNode("")
    try w.property("compatible", string: compatible)
    try w.beginNode("sub")
    try w.property("mem", native: mem)
    try w.endNode()
    try w.endNode()
    return try w.finish()
  }

  /// Writes a handover into a fresh 4 MiB arena and returns it.
  func arenaWithHandover(blob: [UInt8]? = nil) throws -> ([UInt8], HandoverRecord) {
    var arena = [UInt8](repeating: 0, count: 4 << 20)
    let blob = try blob ?? kho()
    let tree = try FlattenedDeviceTree(bytes: blob)
    let cache = try MemCache(
      tree: tree, pageSize: page, arenaSize: UInt64(arena.count), scratch: scratch)
    let record = try arena.withUnsafeMutableBytes { raw in
      try HandoverImage.write(
        blob: blob, memCache: cache, generation: 7, into: raw, pageSize: page, scratch: scratch)
    }
    return (arena, record)
  }

  func read(_ arena: [UInt8], at: UInt64 = 0x10_0000) throws(HandoverError)
    -> HandoverImage.Incoming
  {
    let result: Result<HandoverImage.Incoming, HandoverError> = arena.withUnsafeBytes { raw in
      Result { () throws(HandoverError) in
        try HandoverImage.read(recordAddress: at, arena: raw, pageSize: page)
      }
    }
    return try result.get()
  }

  @Test func roundTrips() throws {
    let (arena, record) = try arenaWithHandover()
    let incoming = try read(arena)
    #expect(incoming.record == record)
    #expect(incoming.record.generation == 7)
    #expect(incoming.memCache.ranges == [KHOMemoryRange(address: 0x1000, length: 0x3000)])
    #expect(incoming.tree.bytes == (try kho()))
  }

  @Test func refusesScratchTooSmall() throws {
    var arena = [UInt8](repeating: 0, count: 4 << 20)
    let blob = [UInt8](repeating: 0, count: 0x10_0000)
    let tree = try FlattenedDeviceTree(bytes: kho())
    let cache = try MemCache(
      tree: tree, pageSize: page, arenaSize: UInt64(arena.count), scratch: scratch)
    #expect(throws: HandoverError.self) {
      try arena.withUnsafeMutableBytes { raw in
        try HandoverImage.write(
          blob: blob, memCache: cache, generation: 1, into: raw, pageSize: page, scratch: scratch)
      }
    }
  }

  @Test func refusesAnyCorruptedByteOfRecordCacheOrBlob() throws {
    let (arena, record) = try arenaWithHandover()
    // Every byte that the checksum covers, flipped, must be caught.
    var offsets = Array(Int(scratch.lowerBound)..<Int(scratch.lowerBound) + 96)
    offsets += Array(Int(record.memCacheAddress)..<Int(record.memCacheAddress) + 16)
    offsets += Array(Int(record.blob.lowerBound)..<Int(record.blob.upperBound))
    for offset in offsets {
      var corrupt = arena
      corrupt[offset] ^= 0x40
      #expect(throws: HandoverError.self) { try read(corrupt) }
    }
  }

  @Test func refusesWrongRecordAddress() throws {
    let (arena, _) = try arenaWithHandover()
    #expect(throws: HandoverError.self) { try read(arena, at: 0x10_1000) }
    #expect(throws: HandoverError.self) { try read(arena, at: UInt64(arena.count) - 8) }
    #expect(throws: HandoverError.self) { try read(arena, at: UInt64.max) }
  }

  @Test func refusesBlobThatIsNotKHOv1() throws {
    let (arena, _) = try arenaWithHandover(blob: kho(compatible: "kho-v2"))
    #expect {
      try read(arena)
    } throws: { error in
      guard case .badBlob(let why) = error as? HandoverError else { return false }
      return why.contains("kho-v2")
    }
  }
}
