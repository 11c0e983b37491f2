import FDT
import Testing

@testable import KHO

@Suite struct AttributesTests {
  typealias P = KHOAttributes.Path

  private func make(scratch: Range<UInt64> = 0x10_0000..<0x30_0000, dtMax: UInt64 = 0xa0_0000)
    -> KHOAttributes
  {
    KHOAttributes(outgoing: KHOOutgoing(scratch: scratch, dtMax: dtMax))
  }

  private func text(_ a: KHOAttributes, _ path: String) throws -> String {
    String(decoding: try a.read(path, offset: 0, count: 4096), as: UTF8.self)
  }

  private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

  @Test func tableHasTheABIFilesAndModes() {
    let a = make()
    let modes = Dictionary(uniqueKeysWithValues: a.table.map { ($0.path, $0.mode) })
    #expect(
      modes == [
        P.active: 0o600, P.dtMax: 0o600, P.scratchLength: 0o400, P.scratchPhysical: 0o400,
        P.dt: 0o400, P.firmwareDT: 0o400,
      ])
  }

  @Test func showFormats() throws {
    let a = make()
    #expect(try text(a, P.active) == "0\n")
    #expect(try text(a, P.dtMax) == "0xa00000\n")
    #expect(try text(a, P.scratchLength) == "0x200000\n")
    #expect(try text(a, P.scratchPhysical) == "0x100000\n")
    #expect(try a.size(P.active) == 4096)
  }

  @Test func noScratchShowsZero() throws {
    let a = make(scratch: 0..<0)
    #expect(try text(a, P.scratchLength) == "0x0\n")
    #expect(try text(a, P.scratchPhysical) == "0x0\n")
  }

  @Test func textReadsByOffset() throws {
    let a = make()
    #expect(try a.read(P.dtMax, offset: 2, count: 3) == bytes("a00"))
    #expect(try a.read(P.dtMax, offset: 8, count: 100) == bytes("\n"))
    #expect(try a.read(P.dtMax, offset: 9, count: 100) == [])
    #expect(try a.read(P.dtMax, offset: 1 << 40, count: 100) == [])
  }

  @Test(arguments: ["1", "1\n", "y", "Y", "t", "T", "on", "ON", "yes"])
  func activeStoreOn(input: String) throws {
    let a = make()
    #expect(try a.write(P.active, bytes(input)) == input.utf8.count)
    #expect(try text(a, P.active) == "1\n")
    #expect(a.outgoing.isActive)
  }

  @Test(arguments: ["0", "0\n", "n", "N", "f", "F", "off", "OFF", "no"])
  func activeStoreOff(input: String) throws {
    let a = make()
    try a.write(P.active, bytes("1"))
    #expect(try a.write(P.active, bytes(input)) == input.utf8.count)
    #expect(try text(a, P.active) == "0\n")
  }

  @Test(arguments: ["\n", "2", "o", "x", " 1", "-1", "+1"])
  func activeStoreInvalid(input: String) throws {
    let a = make()
    #expect(throws: Errno.invalidArgument) { try a.write(P.active, bytes(input)) }
    // Invalid input is EINVAL even without scratch: the parse comes first.
    #expect(throws: Errno.invalidArgument) {
      try make(scratch: 0..<0).write(P.active, bytes(input))
    }
  }

  @Test(arguments: ["0", "1", "off", "on\n"])
  func activeStoreWithoutScratchIsENOMEM(input: String) throws {
    let a = make(scratch: 0..<0)
    #expect(throws: Errno.noMemory) { try a.write(P.active, bytes(input)) }
    #expect(try text(a, P.active) == "0\n")
  }

  @Test func activeStoreSameValueIsANoOp() throws {
    let a = make()
    let counter = EventCounter()
    try a.outgoing.register(
      KHONotifier(name: "c", dump: { _ in counter.dumped() }, abort: { counter.aborted() }))
    try a.write(P.active, bytes("0"))
    #expect(counter.aborts == 0)
    try a.write(P.active, bytes("1"))
    try a.write(P.active, bytes("1"))
    #expect(counter.dumps == 1)
    try a.write(P.active, bytes("0"))
    try a.write(P.active, bytes("0"))
    #expect(counter.aborts == 1)
  }

  @Test func activeStoreFailedSerializeIsEINVAL() throws {
    let a = make()
    try a.outgoing.register(KHONotifier(name: "bad") { _ in throw Errno.noMemory })
    #expect(throws: Errno.invalidArgument) { try a.write(P.active, bytes("1")) }
    #expect(try text(a, P.active) == "0\n")
    #expect(throws: Errno.noSuchFile) { try a.read(P.dt, offset: 0, count: 1) }
  }

  @Test(arguments: [
    ("0x1000", "0x1000\n"), ("4096\n", "0x1000\n"), ("010", "0x8\n"), ("+16", "0x10\n"),
    ("0", "0x0\n"), ("18446744073709551615", "0xffffffffffffffff\n"),
  ])
  func dtMaxStore(input: String, shown: String) throws {
    let a = make()
    #expect(try a.write(P.dtMax, bytes(input)) == input.utf8.count)
    #expect(try text(a, P.dtMax) == shown)
  }

  @Test(arguments: ["", "\n", "-1", "0x", "1K", " 1", "18446744073709551616", "1\n\n"])
  func dtMaxStoreInvalid(input: String) throws {
    let a = make()
    if input.isEmpty {
      // An empty write never reaches the store, as in sysfs.
      #expect(try a.write(P.dtMax, []) == 0)
    } else {
      // Overflow (ERANGE from kstrtoull) is reported as EINVAL too.
      #expect(throws: Errno.invalidArgument) { try a.write(P.dtMax, bytes(input)) }
    }
    #expect(try text(a, P.dtMax) == "0xa00000\n")
  }

  @Test func dtMaxStoreIsBusyWhileActive() throws {
    let a = make()
    try a.write(P.active, bytes("1"))
    #expect(throws: Errno.resourceBusy) { try a.write(P.dtMax, bytes("0x1000")) }
    // Parse errors still come first.
    #expect(throws: Errno.invalidArgument) { try a.write(P.dtMax, bytes("zz")) }
    try a.write(P.active, bytes("0"))
    try a.write(P.dtMax, bytes("0x1000"))
    #expect(try text(a, P.dtMax) == "0x1000\n")
  }

  @Test func readOnlyFilesRefuseWrites() throws {
    let a = make()
    for path in [P.scratchLength, P.scratchPhysical] {
      #expect(throws: Errno.permissionDenied) { try a.write(path, bytes("1")) }
    }
    try a.write(P.active, bytes("1"))
    #expect(throws: Errno.permissionDenied) { try a.write(P.dt, bytes("1")) }
  }

  @Test func writesAboveAPageAreE2BIG() throws {
    let a = make()
    let page = [UInt8](repeating: UInt8(ascii: "1"), count: 4096)
    #expect(try a.write(P.active, page) == 4096)
    #expect(throws: Errno.argumentListTooLong) { try a.write(P.active, page + [0x31]) }
    #expect(throws: Errno.argumentListTooLong) { try a.write(P.dtMax, page + [0x31]) }
  }

  @Test func unknownPathIsENOENT() {
    let a = make()
    #expect(throws: Errno.noSuchFile) { try a.read("kernel/kho/nope", offset: 0, count: 1) }
    #expect(throws: Errno.noSuchFile) { try a.write("kernel/kho/nope", [0x31]) }
  }

  @Test func dtExistsOnlyWhileActive() throws {
    let a = make()
    #expect(a.attribute(P.dt) == nil)
    #expect(throws: Errno.noSuchFile) { try a.read(P.dt, offset: 0, count: 4096) }
    #expect(throws: Errno.noSuchFile) { try a.size(P.dt) }
    try a.write(P.active, bytes("1"))
    let blob = try #require(a.outgoing.dt).bytes
    #expect(try a.size(P.dt) == blob.count)
    #expect(try a.read(P.dt, offset: 0, count: 1 << 20) == blob)
    #expect(try a.read(P.dt, offset: 4, count: 4) == Array(blob[4..<8]))
    // The seed copied past the end; here reads there give 0 bytes.
    #expect(try a.read(P.dt, offset: UInt64(blob.count), count: 16) == [])
    #expect(try a.read(P.dt, offset: UInt64(blob.count) - 2, count: 16) == Array(blob.suffix(2)))
    #expect(try a.read(P.dt, offset: UInt64.max, count: 16) == [])
    #expect(
      try FlattenedDeviceTree(bytes: a.read(P.dt, offset: 0, count: blob.count)).root
        .property("compatible")?.string == "kho-v1")
    try a.write(P.active, bytes("0"))
    #expect(throws: Errno.noSuchFile) { try a.read(P.dt, offset: 0, count: 4096) }
  }

  @Test func firmwareDTSlot() throws {
    let a = make()
    #expect(throws: Errno.noSuchFile) { try a.read(P.firmwareDT, offset: 0, count: 16) }
    a.setIncomingBlob { [1, 2, 3, 4] }
    #expect(try a.read(P.firmwareDT, offset: 1, count: 16) == [2, 3, 4])
    #expect(try a.size(P.firmwareDT) == 4)
    #expect(throws: Errno.permissionDenied) { try a.write(P.firmwareDT, [1]) }
    a.setIncomingBlob(nil)
    #expect(a.attribute(P.firmwareDT) == nil)
  }

  @Test func errnoValuesAreTheKernels() {
    #expect(Errno.invalidArgument.rawValue == 22)
    #expect(Errno.noMemory.rawValue == 12)
    #expect(Errno.resourceBusy.rawValue == 16)
    #expect(Errno.noSuchFile.rawValue == 2)
    #expect(Errno.argumentListTooLong.rawValue == 7)
    #expect(Errno.permissionDenied.rawValue == 13)
    #expect(Errno.invalidArgument.description == "EINVAL (Invalid argument)")
  }
}
