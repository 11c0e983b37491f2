import Testing

@testable import KHOControlFS

@Suite struct ControlConnectionStateTests {
  @Test func roundTripsWithPendingWriteAndCommasInPath() throws {
    let state = ControlConnectionState(
      minor: 38, flags: 0x28 | (1 << 33), maxWrite: 65536, mountPoint: "/tmp/a,path=b",
      pendingWrite: .init(unique: 1234, size: 2))
    #expect(
      state.encoded
        == "kho-fuse-v1:minor=38,flags=0x200000028,max_write=65536,pending=1234/2,path=/tmp/a,path=b"
    )
    #expect(try ControlConnectionState(encoded: state.encoded) == state)
  }

  @Test func refusesOtherVersionsAndMissingFields() {
    #expect(throws: ControlMountError.self) {
      try ControlConnectionState(encoded: "kho-fuse-v2:minor=38,flags=0x0,max_write=1,path=/x")
    }
    #expect(throws: ControlMountError.self) {
      try ControlConnectionState(encoded: "kho-fuse-v1:minor=38,max_write=1,path=/x")
    }
    #expect(throws: ControlMountError.self) {
      try ControlConnectionState(encoded: "kho-fuse-v1:minor=38,flags=0x0,max_write=1")
    }
    #expect(throws: ControlMountError.self) {
      try ControlConnectionState(
        encoded: "kho-fuse-v1:minor=38,flags=0x0,max_write=1,bogus=2,path=/x")
    }
  }
}
