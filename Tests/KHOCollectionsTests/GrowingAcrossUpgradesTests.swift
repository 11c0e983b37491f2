import KHO
import Testing

@testable import KHOCollections

#if canImport(Glibc)
  import Glibc
#endif

// The article GrowingAcrossUpgrades (KHOCollections.docc) shows
// `openSessions` verbatim, and the landing page KHOCollections.md the body
// of `theLandingPagesExampleRuns`: a change here goes there too.

typealias Sessions = ArenaHashMap<String, String>

/// Opens the sessions map: attached when the previous image handed it
/// over, formatted when there is none or it cannot be trusted.
func openSessions(in kho: KHO, bytes: UInt64) throws -> Sessions {
  let region = try KHOCollectionRegion.open(
    in: kho, name: "sessions", compatible: Sessions.compatible, bytes: bytes,
    ifIncompatible: .startCold)
  if let why = region.refused { print("sessions: starting cold: \(why)") }
  guard region.handedOver, let sessions = try? Sessions.attach(region.bytes) else {
    // Nothing handed over, or a header this image cannot trust.
    return try Sessions.format(region.bytes, bucketCount: 4096)
  }
  if region.grown {
    // Optional: the table doubles by itself as it fills.
    try sessions.rehash(bucketCount: Int(bytes / 256))
  }
  return sessions
}

@Suite struct GrowingAcrossUpgradesTests {
  let options = handoverTestOptions

  @Test func theArticlesUpgradeKeepsEverySessionInABiggerMap() throws {
    // Version 1 of the service: 1 MiB of sessions.
    let v1 = try KHO.boot(options, handover: nil)
    let sessions = try openSessions(in: v1, bytes: 1 << 20)
    for i in 0..<5000 { sessions["session-\(i)"] = "user \(i)" }
    #expect(sessions.evictions == 0)

    // Version 2 asks for 4 MiB: the old bytes are copied to the start of a
    // new range, the map attaches and grows into the rest.
    let v2 = try handOver(v1)
    let bigger = try openSessions(in: v2, bytes: 4 << 20)
    #expect(bigger.capacityBytes == 4 << 20)
    #expect(bigger.bucketCount >= (4 << 20) / 256)
    #expect((0..<5000).allSatisfy { bigger["session-\($0)"] == "user \($0)" })
    for i in 5000..<30000 { bigger["session-\(i)"] = "user \(i)" }
    #expect(bigger.evictions == 0 && bigger.damage == 0)

    // Version 3 finds the grown range as it is.
    let v3 = try handOver(v2)
    let again = try openSessions(in: v3, bytes: 4 << 20)
    #expect(again.count == 30000)
  }

  @Test func theArticlesOpenStartsColdOnADamagedHeader() throws {
    let v1 = try KHO.boot(options, handover: nil)
    let sessions = try openSessions(in: v1, bytes: 1 << 20)
    sessions["a"] = "b"
    let v2 = try handOver(v1)
    // Damage the map's magic before the next image opens it: it formats
    // the range instead of trusting it.
    let range = try #require(
      v2.incoming?.findNode(where: { $0.name == "sessions" })?.property("mem")?.native(
        UInt64.self))
    (v2.arena.base + Int(range[0])).storeBytes(of: UInt64(0), as: UInt64.self)
    let fresh = try openSessions(in: v2, bytes: 1 << 20)
    #expect(fresh.isEmpty)
    fresh["c"] = "d"
    #expect(fresh["c"] == "d")
  }

  @Test func theLandingPagesExampleRuns() throws {
    let kho = try KHO.boot(options, handover: nil)
    typealias Sessions = ArenaHashMap<String, String>

    let region = try KHOCollectionRegion.open(
      in: kho, name: "sessions", compatible: Sessions.compatible, bytes: 16 << 20)
    let sessions =
      region.handedOver ? try Sessions.attach(region.bytes) : try Sessions.format(region.bytes)
    sessions["id-1"] = "alice"

    #expect(try Sessions.attach(region.bytes)["id-1"] == "alice")
  }
}
