// The arena: "physical memory" of a service. One memfd, mapped shared and
// read-write; an address is a byte offset into it, so the next image can map
// it anywhere and needs no pointer fix-up.

import KHOSystem
import Logging

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The arena's page size: the allocator's granularity.
public enum ArenaPageSize: UInt64, Sendable, Hashable, CaseIterable {
  /// 4 KiB pages.
  case small = 0x1000
  /// 2 MiB huge pages.
  case huge = 0x20_0000

  /// The size in bytes.
  public var bytes: UInt64 { rawValue }
}

/// What actually backs the arena's memory.
public enum ArenaBacking: String, Sendable, Hashable {
  /// Ordinary 4 KiB shmem pages.
  case smallPages
  /// hugetlbfs 2 MiB pages (`MFD_HUGETLB | MFD_HUGE_2MB`).
  case hugeTLB
  /// shmem with `madvise(MADV_HUGEPAGE)`: transparent huge pages where the
  /// system grants them.
  case transparentHugePages
}

/// Why an arena could not be created or adopted, or an access was refused.
public enum ArenaError: Error, Sendable, Equatable, CustomStringConvertible {
  /// A system call failed.
  case system(SystemCallError)
  /// The size is zero, not a multiple of the page size, or too large.
  case invalidSize(size: UInt64, pageSize: UInt64)
  /// The adopted descriptor is not open (`fstat` failed).
  case badDescriptor(fd: Int32, SystemCallError)
  /// The adopted descriptor is not a memfd; `target` is where
  /// `/proc/self/fd/N` points.
  case notMemfd(fd: Int32, target: String)
  /// The adopted memfd's size is not the stated one.
  case sizeMismatch(fd: Int32, expected: UInt64, actual: UInt64)
  /// The adopted memfd cannot be sealed against shrinking.
  case notSealable(fd: Int32, SystemCallError)
  /// A range that does not lie inside the arena.
  case outOfBounds(offset: UInt64, count: UInt64, arenaSize: UInt64)

  public var description: String {
    switch self {
    case .system(let e): return "\(e)"
    case .invalidSize(let size, let page):
      return
        "arena size 0x\(String(size, radix: 16)) is not a non-zero multiple of the page size 0x\(String(page, radix: 16))"
    case .badDescriptor(let fd, let e): return "fd \(fd) is not an open file: \(e)"
    case .notMemfd(let fd, let target): return "fd \(fd) is not a memfd (it is \(target))"
    case .sizeMismatch(let fd, let expected, let actual):
      return
        "memfd \(fd) has 0x\(String(actual, radix: 16)) bytes, expected 0x\(String(expected, radix: 16))"
    case .notSealable(let fd, let e): return "memfd \(fd) cannot be sealed against shrinking: \(e)"
    case .outOfBounds(let offset, let count, let size):
      return
        "range 0x\(String(offset, radix: 16))+0x\(String(count, radix: 16)) leaves the arena of 0x\(String(size, radix: 16)) bytes"
    }
  }
}

/// The files that tell which huge pages the system offers. Tests point them
/// elsewhere.
public struct HugePageSystemFiles: Sendable {
  /// Free 2 MiB hugetlb pages.
  public var freeHugePages = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"
  /// The shmem THP policy, e.g. `always within_size advise [never] deny force`.
  public var shmemEnabled = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

  /// Default options.
  public init() {}
}

/// One memfd of a fixed size, mapped read-write: the service's "physical
/// memory". Addresses are byte offsets into it.
///
/// The file is sparse (untouched pages cost nothing) and sealed with
/// `F_SEAL_SHRINK | F_SEAL_GROW`, so no mapping of it can ever SIGBUS.
///
/// ```swift
/// let arena = try Arena(size: 64 << 20)
/// let page = try arena.bytes(at: 0x1000, count: 0x1000)
/// page[0] = 42
/// ```
///
/// The arena owns its descriptor and mapping: both go away with it. The
/// descriptor is close-on-exec; the runtime clears that on purpose when it
/// hands the arena to the next image.
public final class Arena: @unchecked Sendable {
  // @unchecked: every stored property is immutable; the memory behind `base`
  // is shared by design, and callers coordinate through the allocator.

  /// The memfd.
  public let fd: FileDescriptor
  /// The size in bytes.
  public let size: UInt64
  /// The page size: the allocator's granularity.
  public let pageSize: ArenaPageSize
  /// What backs the memory.
  public let backing: ArenaBacking
  /// The start of the mapping. Offset `a` is at `base + a`.
  public let base: UnsafeMutableRawPointer

  /// Creates a sparse arena of `size` bytes.
  ///
  /// With ``ArenaPageSize/huge``, a hugetlb memfd is used when enough 2 MiB
  /// pages are free, else shmem with `MADV_HUGEPAGE`; when the system
  /// grants neither, the arena still works with 4 KiB backing (and a 2 MiB
  /// allocation granularity) and a warning is logged.
  ///
  /// - Parameters:
  ///   - size: the size, a non-zero multiple of the page size.
  ///   - pageSize: the page size.
  ///   - name: the memfd's name (`/memfd:NAME` in `/proc`).
  ///   - logger: where the huge page warning goes.
  ///   - system: the files that describe huge page availability.
  public init(
    size: UInt64, pageSize: ArenaPageSize = .small, name: String = "kho-arena",
    logger: Logger = Logger(label: "kho.arena"), system: HugePageSystemFiles = .init()
  ) throws(ArenaError) {
    try Self.checkSize(size, pageSize)
    if pageSize == .huge,
      Self.freeHugeTLBPages(system) >= size / pageSize.bytes,
      let made = try? Self.create(size: size, name: name, hugeTLB: true)
    {
      (fd, base) = made
      backing = .hugeTLB
    } else {
      (fd, base) = try Self.create(size: size, name: name, hugeTLB: false)
      backing = pageSize == .huge ? Self.adviseHugePages(base, size, system, logger) : .smallPages
    }
    self.size = size
    self.pageSize = pageSize
  }

  /// Adopts an inherited memfd (the incoming side), after checking that it
  /// is one, of the stated size, and sealed against shrinking (the seal is
  /// added if missing).
  ///
  /// On success the arena owns `fd`; on failure the caller still does.
  ///
  /// - Parameters:
  ///   - fd: the inherited descriptor.
  ///   - size: the size the previous image stated.
  ///   - pageSize: the page size the previous image stated.
  ///   - logger: where a huge page warning goes.
  ///   - system: the files that describe huge page availability.
  /// - Throws: ``ArenaError`` naming what is wrong.
  public init(
    adopting fd: FileDescriptor, size: UInt64, pageSize: ArenaPageSize,
    logger: Logger = Logger(label: "kho.arena"), system: HugePageSystemFiles = .init()
  ) throws(ArenaError) {
    try Self.checkSize(size, pageSize)
    let status: FileStatus
    do { status = try fd.status() } catch { throw .badDescriptor(fd: fd.rawValue, error) }
    let target = (try? fd.procLinkTarget()) ?? "unknown"
    // Both tests: the link names memfds, F_GET_SEALS works only on files
    // that support sealing (memfd, and hugetlbfs memfds).
    guard target.hasPrefix("/memfd:"), let seals = try? fd.seals() else {
      throw .notMemfd(fd: fd.rawValue, target: target)
    }
    guard status.size >= 0, UInt64(status.size) == size else {
      throw .sizeMismatch(fd: fd.rawValue, expected: size, actual: UInt64(max(status.size, 0)))
    }
    if !seals.contains(.shrink) {
      do { try fd.addSeals([.shrink, .grow]) } catch { throw .notSealable(fd: fd.rawValue, error) }
    }
    do {
      base = try MemoryMapping.mapShared(fd, length: Int(size))
    } catch { throw .system(error) }
    self.fd = fd
    self.size = size
    self.pageSize = pageSize
    if UInt64(status.blockSize) == ArenaPageSize.huge.bytes {
      backing = .hugeTLB  // hugetlbfs reports its page size as st_blksize
    } else if pageSize == .huge {
      backing = Self.adviseHugePages(base, size, system, logger)
    } else {
      backing = .smallPages
    }
  }

  deinit {
    try? MemoryMapping.unmap(base, length: Int(size))
    try? fd.close()
  }

  /// Whether `offset..<offset+count` lies inside the arena.
  public func contains(offset: UInt64, count: UInt64) -> Bool {
    let (end, overflow) = offset.addingReportingOverflow(count)
    return !overflow && end <= size
  }

  /// The bytes of `offset..<offset+count`, checked against the arena's
  /// bounds. The buffer stays valid as long as the arena lives.
  ///
  /// - Throws: ``ArenaError/outOfBounds(offset:count:arenaSize:)``.
  public func bytes(at offset: UInt64, count: UInt64) throws(ArenaError)
    -> UnsafeMutableRawBufferPointer
  {
    guard contains(offset: offset, count: count) else {
      throw .outOfBounds(offset: offset, count: count, arenaSize: size)
    }
    return UnsafeMutableRawBufferPointer(start: base + Int(offset), count: Int(count))
  }

  /// Calls `body` with the bytes of `offset..<offset+count`.
  ///
  /// The range must lie inside the arena (a programming error otherwise:
  /// check untrusted ranges with ``bytes(at:count:)`` or
  /// ``contains(offset:count:)`` first).
  public func withUnsafeMutableBytes<R, E: Error>(
    at offset: UInt64, count: UInt64, _ body: (UnsafeMutableRawBufferPointer) throws(E) -> R
  ) throws(E) -> R {
    precondition(contains(offset: offset, count: count), "range outside the arena")
    return try body(UnsafeMutableRawBufferPointer(start: base + Int(offset), count: Int(count)))
  }

  private static func checkSize(_ size: UInt64, _ pageSize: ArenaPageSize) throws(ArenaError) {
    guard size > 0, size % pageSize.bytes == 0, size <= UInt64(Int.max) else {
      throw .invalidSize(size: size, pageSize: pageSize.bytes)
    }
  }

  /// memfd, size, seals, mapping; on failure nothing is left open.
  private static func create(size: UInt64, name: String, hugeTLB: Bool) throws(ArenaError)
    -> (FileDescriptor, UnsafeMutableRawPointer)
  {
    var flags: MemfdFlags = [.closeOnExec, .allowSealing]
    if hugeTLB { flags.formUnion([.hugeTLB, .huge2MB]) }
    do throws(SystemCallError) {
      let fd = try FileDescriptor.memfdCreate(name: name, flags: flags)
      do throws(SystemCallError) {
        try fd.truncate(to: Int64(size))
        try fd.addSeals([.shrink, .grow])
        // A shared hugetlb mapping reserves its pages here, so a shortage
        // fails now with ENOMEM instead of a SIGBUS at first touch.
        return (fd, try MemoryMapping.mapShared(fd, length: Int(size)))
      } catch {
        try? fd.close()
        throw error
      }
    } catch { throw .system(error) }
  }

  /// Asks for shmem THP; warns when the policy refuses it.
  private static func adviseHugePages(
    _ base: UnsafeMutableRawPointer, _ size: UInt64, _ system: HugePageSystemFiles, _ logger: Logger
  ) -> ArenaBacking {
    let policy = shmemTHPPolicy(system)
    let refused = policy == "never" || policy == "deny" || policy == nil
    if !refused, (try? MemoryMapping.advise(base, length: Int(size), .hugePage)) != nil {
      return .transparentHugePages
    }
    logger.warning(
      """
      huge pages requested but none available: no free hugetlb pages \
      (/proc/sys/vm/nr_hugepages) and shmem transparent huge pages are \
      '\(policy ?? "unavailable")' (\(system.shmemEnabled)); the arena uses 4 KiB \
      pages with a 2 MiB allocation granularity
      """)
    return .smallPages
  }

  static func freeHugeTLBPages(_ system: HugePageSystemFiles) -> UInt64 {
    guard let text = readSmallFile(system.freeHugePages) else { return 0 }
    return UInt64(text.filter { !$0.isWhitespace }) ?? 0
  }

  /// The bracketed word of `shmem_enabled`, e.g. `never`.
  static func shmemTHPPolicy(_ system: HugePageSystemFiles) -> String? {
    guard let text = readSmallFile(system.shmemEnabled),
      let open = text.firstIndex(of: "["), let close = text.firstIndex(of: "]"), open < close
    else { return nil }
    return String(text[text.index(after: open)..<close])
  }

  static func readSmallFile(_ path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var buffer = [CChar](repeating: 0, count: 256)
    guard fgets(&buffer, Int32(buffer.count), file) != nil else { return nil }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }
}
