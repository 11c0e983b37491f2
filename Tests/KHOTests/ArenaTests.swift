import Foundation
import Testing

@testable import KHO

@Suite struct ArenaTests {
  @Test func createsASparseSealedMemfd() throws {
    let size: UInt64 = 256 << 20
    let arena = try Arena(size: size, name: "kho-test")
    #expect(arena.size == size)
    #expect(arena.pageSize == .small)
    #expect(arena.backing == .smallPages)
    let status = try arena.fd.status()
    #expect(status.size == Int64(size))
    #expect(status.blocks < 1024)  // sparse: nothing touched yet
    let seals = try arena.fd.seals()
    #expect(seals.contains([.shrink, .grow]))
    #expect(try arena.fd.procLinkTarget().hasPrefix("/memfd:kho-test"))

    // Touch one page far in: it reads back, and only it is allocated.
    let page = try arena.bytes(at: 200 << 20, count: 4096)
    page.storeBytes(of: 0xdead_beef, toByteOffset: 8, as: UInt64.self)
    #expect(page.load(fromByteOffset: 8, as: UInt64.self) == 0xdead_beef)
    #expect(try arena.fd.status().blocks <= 1024)
  }

  @Test func sealsRefuseShrinkAndGrowWithEPERM() throws {
    let arena = try Arena(size: 1 << 20)
    #expect(throws: SystemCallError("ftruncate", Errno(rawValue: EPERM))) {
      try arena.fd.truncate(to: 4096)
    }
    #expect(throws: SystemCallError("ftruncate", Errno(rawValue: EPERM))) {
      try arena.fd.truncate(to: 2 << 20)
    }
    #expect(try arena.fd.status().size == 1 << 20)
  }

  @Test func boundsChecks() throws {
    let arena = try Arena(size: 1 << 20)
    #expect(arena.contains(offset: 0, count: 1 << 20))
    #expect(!arena.contains(offset: 1, count: 1 << 20))
    #expect(!arena.contains(offset: UInt64.max, count: 2))
    #expect(throws: ArenaError.outOfBounds(offset: 0xff000, count: 0x2000, arenaSize: 1 << 20)) {
      try arena.bytes(at: 0xff000, count: 0x2000)
    }
    let sum = arena.withUnsafeMutableBytes(at: 0x1000, count: 16) { buffer in
      buffer.copyBytes(from: [1, 2, 3])
      return buffer.prefix(3).reduce(0) { $0 + Int($1) }
    }
    #expect(sum == 6)
  }

  @Test(arguments: [UInt64(0), 4095, 4097])
  func invalidSizes(size: UInt64) {
    #expect(throws: ArenaError.invalidSize(size: size, pageSize: 4096)) {
      try Arena(size: size)
    }
  }

  @Test func hugeSizeMustBeAMultipleOf2MiB() {
    #expect(throws: ArenaError.invalidSize(size: 1 << 20, pageSize: 2 << 20)) {
      try Arena(size: 1 << 20, pageSize: .huge)
    }
  }

  @Test func hugePagesFallBackWithAWarningWhenNoneAvailable() throws {
    var system = HugePageSystemFiles()
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent(
      "kho-hp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    system.freeHugePages = dir.appendingPathComponent("free").path
    system.shmemEnabled = dir.appendingPathComponent("shmem").path
    try "0\n".write(toFile: system.freeHugePages, atomically: true, encoding: .utf8)
    try "always within_size advise [never] deny force\n".write(
      toFile: system.shmemEnabled, atomically: true, encoding: .utf8)
    #expect(Arena.shmemTHPPolicy(system) == "never")
    #expect(Arena.freeHugeTLBPages(system) == 0)
    let arena = try Arena(size: 4 << 20, pageSize: .huge, system: system)
    #expect(arena.backing == .smallPages)
    #expect(arena.pageSize.bytes == 2 << 20)

    try "always within_size [advise] never deny force\n".write(
      toFile: system.shmemEnabled, atomically: true, encoding: .utf8)
    let advised = try Arena(size: 4 << 20, pageSize: .huge, system: system)
    #expect(advised.backing == .transparentHugePages)
  }

  @Test func adoptsAnInheritedMemfd() throws {
    let fd = try FileDescriptor.memfdCreate(name: "kho-inherited", flags: [.allowSealing])
    try fd.truncate(to: 1 << 20)
    let arena = try Arena(adopting: fd, size: 1 << 20, pageSize: .small)
    #expect(try arena.fd.seals().contains(.shrink))  // the seal was added
    try arena.bytes(at: 0, count: 1)[0] = 7
    #expect(arena.fd == fd)
  }

  @Test func adoptedMemorySurvivesRemapping() throws {
    let first = try Arena(size: 1 << 20)
    try first.bytes(at: 0x2000, count: 8).storeBytes(of: 0x1234, as: UInt64.self)
    // A second mapping of a duplicate of the fd, as the next image sees it.
    let copy = FileDescriptor(rawValue: dup(first.fd.rawValue))
    let second = try Arena(adopting: copy, size: 1 << 20, pageSize: .small)
    #expect(try second.bytes(at: 0x2000, count: 8).load(as: UInt64.self) == 0x1234)
  }

  @Test func adoptRefusesAClosedFD() {
    #expect {
      try Arena(adopting: FileDescriptor(rawValue: 9999), size: 1 << 20, pageSize: .small)
    } throws: { error in
      guard case .badDescriptor(9999, let e) = error as? ArenaError else { return false }
      return e.errno.rawValue == EBADF && e.description == "fstat: Bad file descriptor (EBADF)"
    }
  }

  @Test func adoptRefusesARegularFile() throws {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent(
      "kho-not-memfd-\(getpid())"
    ).path
    let raw = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
    #expect(raw >= 0)
    defer {
      close(raw)
      unlink(path)
    }
    _ = ftruncate(raw, 1 << 20)
    #expect {
      try Arena(adopting: FileDescriptor(rawValue: raw), size: 1 << 20, pageSize: .small)
    } throws: { error in
      guard case .notMemfd(raw, let target) = error as? ArenaError else { return false }
      return target == path
    }
  }

  @Test func adoptRefusesTheWrongSize() throws {
    let fd = try FileDescriptor.memfdCreate(name: "kho-small", flags: [.allowSealing])
    defer { try? fd.close() }
    try fd.truncate(to: 1 << 20)
    #expect(throws: ArenaError.sizeMismatch(fd: fd.rawValue, expected: 2 << 20, actual: 1 << 20)) {
      try Arena(adopting: fd, size: 2 << 20, pageSize: .small)
    }
  }

  @Test func adoptRefusesAnUnsealableMemfd() throws {
    // Without MFD_ALLOW_SEALING a memfd carries F_SEAL_SEAL from birth.
    let fd = try FileDescriptor.memfdCreate(name: "kho-nosealing", flags: [])
    defer { try? fd.close() }
    try fd.truncate(to: 1 << 20)
    #expect {
      try Arena(adopting: fd, size: 1 << 20, pageSize: .small)
    } throws: { error in
      guard case .notSealable(_, let e) = error as? ArenaError else { return false }
      return e.errno.rawValue == EPERM
    }
  }

  @Test func systemErrorReadsWell() {
    #expect(
      SystemCallError("memfd_create", Errno(rawValue: ENOMEM)).description
        == "memfd_create: Cannot allocate memory (ENOMEM)")
  }
}
