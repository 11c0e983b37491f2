import KHOSystem
import Testing

#if canImport(Glibc)
  import Glibc
#endif

@Suite struct SystemTests {
  @Test func memfdMapAndAdvise() throws {
    let fd = try FileDescriptor.memfdCreate(name: "kho-sys", flags: [.closeOnExec, .allowSealing])
    defer { try? fd.close() }
    try fd.truncate(to: 1 << 21)
    #expect(try fd.seals() == [])
    try fd.addSeals([.shrink, .grow, .seal])
    #expect(try fd.seals() == [.shrink, .grow, .seal])
    #expect(throws: SystemCallError("fcntl(F_ADD_SEALS)", Errno(rawValue: EPERM))) {
      try fd.addSeals(.write)
    }
    let base = try MemoryMapping.mapShared(fd, length: 1 << 21)
    base.storeBytes(of: 99, as: UInt8.self)
    // madvise wants a page-aligned start.
    #expect(throws: SystemCallError("madvise", Errno(rawValue: EINVAL))) {
      try MemoryMapping.advise(base + 1, length: 4096, .hugePage)
    }
    try MemoryMapping.unmap(base, length: 1 << 21)
  }

  /// The fd table probe sees what is open, high numbers included, and
  /// nothing that was closed; the result is sorted.
  @Test func openDescriptorsListsWhatIsOpen() throws {
    let (read, write) = try FileDescriptor.pipe()
    let high = dup2(read.rawValue, 900)
    #expect(high == 900)
    let open = openDescriptors()
    #expect(open.contains(read.rawValue) && open.contains(write.rawValue) && open.contains(900))
    #expect(open.contains(0) && open.contains(1) && open.contains(2))
    #expect(open == open.sorted())
    close(900)
    write.closeIgnoringErrors()
    let after = openDescriptors()
    // (A low number may be taken again at once by a test running beside
    // this one; 900 is not, as fds are allocated lowest first.)
    #expect(!after.contains(900))
    #expect(after.contains(read.rawValue))
    read.closeIgnoringErrors()
  }

  @Test func errorsOnABadDescriptor() {
    let bad = FileDescriptor(rawValue: -1)
    #expect(throws: SystemCallError("fstat", Errno(rawValue: EBADF))) { try bad.status() }
    #expect(throws: SystemCallError("close", Errno(rawValue: EBADF))) { try bad.close() }
    #expect(throws: SystemCallError("mmap", Errno(rawValue: EBADF))) {
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
