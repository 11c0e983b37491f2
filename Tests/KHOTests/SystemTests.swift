import Testing

@testable import KHO

#if canImport(Glibc)
  import Glibc
#endif

@Suite struct SystemTests {
  @Test func systemCallRetriesOnEINTR() throws {
    var calls = 0
    let value = try systemCall("fake") { err -> Int in
      calls += 1
      err.pointee = calls < 3 ? EINTR : 0
      return calls
    }.get()
    #expect(value == 3)
  }

  @Test func systemCallReportsOtherErrnosAtOnce() {
    var calls = 0
    let result = systemCall("fake") { err -> Int in
      calls += 1
      err.pointee = ENOMEM
      return -1
    }
    #expect(calls == 1)
    #expect(throws: SystemError(errno: ENOMEM, function: "fake")) { try result.get() }
  }

  @Test func noRetryWhenNotAsked() {
    let result = systemCall("close", retryOnInterrupt: false) { err -> Int in
      err.pointee = EINTR
      return -1
    }
    #expect(throws: SystemError(errno: EINTR, function: "close")) { try result.get() }
  }

  @Test func memfdMapAndAdvise() throws {
    let fd = try FileDescriptor.memfdCreate(name: "kho-sys", flags: [.closeOnExec, .allowSealing])
    defer { try? fd.close() }
    try fd.truncate(to: 1 << 21)
    #expect(try fd.seals() == [])
    try fd.addSeals([.shrink, .grow, .seal])
    #expect(try fd.seals() == [.shrink, .grow, .seal])
    #expect(throws: SystemError(errno: EPERM, function: "fcntl(F_ADD_SEALS)")) {
      try fd.addSeals(.write)
    }
    let base = try MemoryMapping.mapShared(fd, length: 1 << 21)
    base.storeBytes(of: 99, as: UInt8.self)
    // madvise wants a page-aligned start.
    #expect(throws: SystemError(errno: EINVAL, function: "madvise")) {
      try MemoryMapping.advise(base + 1, length: 4096, .hugePage)
    }
    try MemoryMapping.unmap(base, length: 1 << 21)
  }

  @Test func errorsOnABadDescriptor() {
    let bad = FileDescriptor(rawValue: -1)
    #expect(throws: SystemError(errno: EBADF, function: "fstat")) { try bad.status() }
    #expect(throws: SystemError(errno: EBADF, function: "close")) { try bad.close() }
    #expect(throws: SystemError(errno: EBADF, function: "mmap")) {
      try MemoryMapping.mapShared(bad, length: 4096)
    }
  }

  @Test func flagsAreTheKernels() {
    #expect(FileSeals.seal.rawValue == 0x1)
    #expect(FileSeals.shrink.rawValue == 0x2)
    #expect(FileSeals.grow.rawValue == 0x4)
    #expect(FileSeals.write.rawValue == 0x8)
    #expect(MemfdFlags.closeOnExec.rawValue == 0x1)
    #expect(MemfdFlags.allowSealing.rawValue == 0x2)
    #expect(MemfdFlags.hugeTLB.rawValue == 0x4)
    #expect(MemfdFlags.huge2MB.rawValue == 21 << 26)
    #expect(MemoryAdvice.hugePage.rawValue == 14)
  }
}
