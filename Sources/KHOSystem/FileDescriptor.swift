import CKHOSystem

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A raw file descriptor, as swift-system's `FileDescriptor`: a plain value
/// that does not close itself. Whoever opened it decides when to
/// ``close()`` it.
public struct FileDescriptor: Sendable, Hashable, RawRepresentable {
  /// The descriptor number.
  public let rawValue: Int32

  /// Wraps an existing descriptor number.
  public init(rawValue: Int32) { self.rawValue = rawValue }
}

/// Flags of ``FileDescriptor/memfdCreate(name:flags:)``.
public struct MemfdFlags: OptionSet, Sendable, Hashable {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  /// `MFD_CLOEXEC`: close on `execve` unless cleared on purpose.
  public static let closeOnExec = MemfdFlags(rawValue: ckho_MFD_CLOEXEC)
  /// `MFD_ALLOW_SEALING`: seals may be added later.
  public static let allowSealing = MemfdFlags(rawValue: ckho_MFD_ALLOW_SEALING)
  /// `MFD_HUGETLB`: back the file with hugetlbfs pages.
  public static let hugeTLB = MemfdFlags(rawValue: ckho_MFD_HUGETLB)
  /// `MFD_HUGE_2MB`: with ``hugeTLB``, 2 MiB pages.
  public static let huge2MB = MemfdFlags(rawValue: ckho_MFD_HUGE_2MB)
}

/// File seals (`F_SEAL_*`), as `fcntl(F_ADD_SEALS)` takes them.
public struct FileSeals: OptionSet, Sendable, Hashable {
  public let rawValue: Int32
  public init(rawValue: Int32) { self.rawValue = rawValue }

  /// `F_SEAL_SEAL`: no more seals may be added.
  public static let seal = FileSeals(rawValue: ckho_F_SEAL_SEAL)
  /// `F_SEAL_SHRINK`: the file may not shrink, so no mapping can SIGBUS.
  public static let shrink = FileSeals(rawValue: ckho_F_SEAL_SHRINK)
  /// `F_SEAL_GROW`: the file may not grow.
  public static let grow = FileSeals(rawValue: ckho_F_SEAL_GROW)
  /// `F_SEAL_WRITE`: the contents may not change.
  public static let write = FileSeals(rawValue: ckho_F_SEAL_WRITE)
}

/// What ``FileDescriptor/status()`` reports.
public struct FileStatus: Sendable, Equatable {
  /// `st_size`, in bytes.
  public var size: Int64
  /// `st_mode`: type and permission bits.
  public var mode: UInt32
  /// `st_blocks`: 512-byte blocks actually allocated (sparse files have few).
  public var blocks: Int64
  /// `st_blksize`: the preferred I/O size; the huge page size on hugetlbfs.
  public var blockSize: Int64
}

extension FileDescriptor {
  /// Creates an anonymous memory-backed file.
  ///
  /// - Parameters:
  ///   - name: a name for debugging; it shows in `/proc/self/fd` as
  ///     `/memfd:NAME`.
  ///   - flags: `MFD_*` flags.
  /// - Returns: the new descriptor, of size 0.
  ///
  /// The corresponding C function is `memfd_create`.
  public static func memfdCreate(name: String, flags: MemfdFlags) throws(SystemCallError)
    -> FileDescriptor
  {
    let fd = try systemCall("memfd_create") { ckho_memfd_create(name, flags.rawValue) }.get()
    return FileDescriptor(rawValue: fd)
  }

  /// Sets the file's size; sparse: no page is allocated.
  ///
  /// - Parameter size: the new size in bytes.
  ///
  /// The corresponding C function is `ftruncate`.
  public func truncate(to size: Int64) throws(SystemCallError) {
    _ = try systemCall("ftruncate") { ftruncate(rawValue, off_t(size)) }.get()
  }

  /// The file's size, mode and allocated blocks.
  ///
  /// The corresponding C function is `fstat`.
  public func status() throws(SystemCallError) -> FileStatus {
    var info = stat()
    _ = try systemCall("fstat") { fstat(rawValue, &info) }.get()
    return FileStatus(
      size: Int64(info.st_size), mode: UInt32(info.st_mode), blocks: Int64(info.st_blocks),
      blockSize: Int64(info.st_blksize))
  }

  /// Adds seals to a memfd created with ``MemfdFlags/allowSealing``.
  ///
  /// - Parameter seals: the seals to add; seals already present stay.
  ///
  /// The corresponding C function is `fcntl(fd, F_ADD_SEALS, seals)`.
  public func addSeals(_ seals: FileSeals) throws(SystemCallError) {
    _ = try systemCall("fcntl(F_ADD_SEALS)") { ckho_add_seals(rawValue, seals.rawValue) }.get()
  }

  /// The seals the file carries. Fails with `EINVAL` on a file that is not
  /// a memfd (or another file system without sealing).
  ///
  /// The corresponding C function is `fcntl(fd, F_GET_SEALS)`.
  public func seals() throws(SystemCallError) -> FileSeals {
    let raw = try systemCall("fcntl(F_GET_SEALS)") { ckho_get_seals(rawValue) }.get()
    return FileSeals(rawValue: raw)
  }

  /// Where `/proc/self/fd/N` points, for example `/memfd:kho-arena (deleted)`.
  ///
  /// The corresponding C function is `readlink`.
  public func procLinkTarget() throws(SystemCallError) -> String {
    try Self.linkTarget("/proc/self/fd/\(rawValue)")
  }

  /// Where the symbolic link `path` points.
  ///
  /// The corresponding C function is `readlink`.
  public static func linkTarget(_ path: String) throws(SystemCallError) -> String {
    var buffer = [UInt8](repeating: 0, count: 4096)
    let count = try systemCall("readlink") {
      buffer.withUnsafeMutableBufferPointer { b in
        b.baseAddress!.withMemoryRebound(to: CChar.self, capacity: b.count) {
          readlink(path, $0, b.count)
        }
      }
    }.get()
    return String(decoding: buffer[..<count], as: UTF8.self)
  }

  /// Closes the descriptor. `EINTR` is not retried: Linux has closed the
  /// descriptor anyway, and a retry could close a reused number.
  ///
  /// The corresponding C function is `close`.
  public func close() throws(SystemCallError) {
    _ = try systemCall("close", retryOnInterrupt: false) { Glibc.close(rawValue) }.get()
  }
}
