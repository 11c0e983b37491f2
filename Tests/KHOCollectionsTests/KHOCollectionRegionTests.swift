import KHO
import Testing

@testable import KHOCollections

#if canImport(Glibc)
  import Glibc
#endif

/// Collections through the real KHO core on a real memfd arena: one KHO
/// serializes and loads, a second boots from a duplicate of its arena fd
/// (as the next image does from the inherited one) and attaches.
@Suite struct KHOCollectionRegionTests {
  let options = handoverTestOptions

  @Test func aMapARingAndAnArraySurviveTheHandoverAndAttachInPlace() throws {
    let old = try KHO.boot(options, handover: nil)
    typealias Sessions = ArenaHashMap<String, String>
    let mapRegion = try KHOCollectionRegion.open(
      in: old, name: "sessions", compatible: Sessions.compatible, bytes: 1 << 20)
    #expect(!mapRegion.handedOver)
    let sessions = try Sessions.format(mapRegion.bytes, bucketCount: 256)
    for i in 0..<1000 { sessions["s\(i)"] = "user \(i)" }
    let ringRegion = try KHOCollectionRegion.open(
      in: old, name: "log", compatible: ArenaRing.compatible, bytes: 64 << 10)
    let ring = try ArenaRing.format(ringRegion.bytes)
    for i in 0..<10 { try ring.append("event \(i)") }
    let arrayRegion = try KHOCollectionRegion.open(
      in: old, name: "samples", compatible: ArenaArray<UInt64>.compatible, bytes: 4096)
    let samples = try ArenaArray<UInt64>.format(arrayRegion.bytes)
    for i in 0..<100 { try samples.append(UInt64(i * i)) }

    let new = try handOver(old)
    let mapAgain = try KHOCollectionRegion.open(
      in: new, name: "sessions", compatible: Sessions.compatible, bytes: 1 << 20)
    #expect(mapAgain.handedOver && !mapAgain.grown)
    #expect(mapAgain.range == mapRegion.range)
    let attached = try Sessions.attach(mapAgain.bytes)
    #expect((0..<1000).allSatisfy { attached["s\($0)"] == "user \($0)" })
    let ringAgain = try KHOCollectionRegion.open(
      in: new, name: "log", compatible: ArenaRing.compatible, bytes: 64 << 10)
    #expect(
      try ArenaRing.attach(ringAgain.bytes).records(as: String.self).map(\.value)
        == (0..<10).map { "event \($0)" })
    let arrayAgain = try KHOCollectionRegion.open(
      in: new, name: "samples", compatible: ArenaArray<UInt64>.compatible, bytes: 4096)
    #expect(
      Array(try ArenaArray<UInt64>.attach(arrayAgain.bytes)) == (0..<100).map { UInt64($0 * $0) })
  }

  @Test func theNextVersionGrowsTheMapIntoABiggerRange() throws {
    let old = try KHO.boot(options, handover: nil)
    typealias Counters = ArenaHashMap<UInt64, UInt64>
    let small = try KHOCollectionRegion.open(
      in: old, name: "counters", compatible: Counters.compatible, bytes: 64 << 10)
    let counters = try Counters.format(small.bytes, bucketCount: 64)
    for i in 0..<300 { counters[UInt64(i)] = UInt64(i) + 1 }
    #expect(counters.evictions == 0)

    let new = try handOver(old)
    let big = try KHOCollectionRegion.open(
      in: new, name: "counters", compatible: Counters.compatible, bytes: 1 << 20)
    #expect(big.handedOver && big.grown && big.range.length == 1 << 20)
    let grown = try Counters.attach(big.bytes)
    try grown.rehash(bucketCount: 4096)
    #expect((0..<300).allSatisfy { grown[UInt64($0)] == UInt64($0) + 1 })
    for i in 300..<5000 { grown[UInt64(i)] = UInt64(i) + 1 }
    #expect(grown.evictions == 0)
    #expect((0..<5000).allSatisfy { grown[UInt64($0)] == UInt64($0) + 1 })

    // And the grown range is what the next image finds.
    let third = try handOver(new)
    let again = try KHOCollectionRegion.open(
      in: third, name: "counters", compatible: Counters.compatible, bytes: 1 << 20)
    #expect(again.range == big.range && !again.grown)
    #expect(try Counters.attach(again.bytes).count == 5000)
  }

  @Test func refusesANodeOfAnotherLayout() throws {
    let old = try KHO.boot(options, handover: nil)
    _ = try KHOCollectionRegion.open(
      in: old, name: "thing", compatible: ArenaRing.compatible, bytes: 4096)
    let new = try handOver(old)
    #expect(throws: KHOCollectionRegion.Failure.self) {
      try KHOCollectionRegion.open(
        in: new, name: "thing", compatible: ArenaHashMap<UInt64, UInt64>.compatible, bytes: 4096)
    }
  }

  @Test func refusesAMapNodeOfAnOlderVersionOrStartsColdWhenAsked() throws {
    // The previous image wrote version 1 of the map; this one reads only 2.
    let old = try KHO.boot(options, handover: nil)
    let v1 = try KHOCollectionRegion.open(
      in: old, name: "sessions", compatible: "kho-collections,hash-map-v1", bytes: 4096)
    let new = try handOver(old)
    let compatible = ArenaHashMap<String, String>.compatible
    // By default opening fails, with both versions in the message.
    do {
      _ = try KHOCollectionRegion.open(
        in: new, name: "sessions", compatible: compatible, bytes: 4096)
      Issue.record("a version-1 node was opened as version 2")
    } catch {
      #expect(
        "\(error)"
          == "collection node: sessions is kho-collections,hash-map-v1, not \(compatible)")
    }
    // Asked to, it starts cold in a fresh range and says why.
    let fresh = try KHOCollectionRegion.open(
      in: new, name: "sessions", compatible: compatible, bytes: 4096, ifIncompatible: .startCold)
    #expect(!fresh.handedOver && fresh.range != v1.range)
    #expect(fresh.refused == "sessions is kho-collections,hash-map-v1, not \(compatible)")
    let sessions = try ArenaHashMap<String, String>.format(fresh.bytes, bucketCount: 16)
    sessions["s"] = "new"
    #expect(sessions["s"] == "new")
  }
}
