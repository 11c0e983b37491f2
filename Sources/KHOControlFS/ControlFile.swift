/// One file of a control mount: its permission bits and what reading and
/// writing it do.
///
/// Every `read(2)` and `write(2)` reaches the handlers (the mount uses direct
/// I/O: nothing is cached), one request at a time for the whole mount, on the
/// mount's own thread — never on the service's event loops. A handler may
/// block; other callers of the mount wait, as they wait for the kernel's
/// mutex behind a sysfs attribute.
///
/// ```swift
/// let enabled = Mutex(false)
/// let file = ControlFile.attribute(mode: 0o600) {
///   Array((enabled.withLock { $0 } ? "1\n" : "0\n").utf8)
/// } store: { bytes throws(Errno) in
///   guard let first = bytes.first, first == 0x30 || first == 0x31 else { throw .invalidArgument }
///   enabled.withLock { $0 = first == 0x31 }
/// }
/// ```
public struct ControlFile: Sendable {
  /// Returns at most `count` bytes of the file from byte `offset`; fewer
  /// (or none) at the end of the file.
  public typealias Reader = @Sendable (_ offset: Int, _ count: Int) throws(Errno) -> [UInt8]
  /// Consumes the bytes of one `write(2)` (at most 4096: larger writes fail
  /// with E2BIG before reaching the handler).
  public typealias Writer = @Sendable (_ bytes: [UInt8]) throws(Errno) -> Void
  /// A writer that also sees the file offset of the write, for files whose
  /// content may arrive in several `write(2)` calls of one open (a shell's
  /// `printf` writes each argument separately).
  public typealias OffsetWriter =
    @Sendable (_ offset: Int, _ bytes: [UInt8]) throws(Errno) -> Void

  /// Permission bits, `0o600`, `0o400`, `0o444`, `0o200`... The kernel
  /// enforces them against the caller (`default_permissions`); in addition,
  /// as sysfs does, opening for writing a file without write bits or without
  /// a writer fails with EACCES even for root (and likewise for reading).
  public var mode: UInt32
  /// What `read(2)` returns; `nil`: not readable.
  public var read: Reader?
  /// What `write(2)` does; `nil`: not writable.
  public var write: Writer?
  /// When set, used instead of ``write`` with the offset of each write.
  public var writeAt: OffsetWriter?
  /// The size `stat(2)` reports. Reads do not depend on it (direct I/O).
  public var size: @Sendable () -> UInt64
  /// Whether the file exists now: when `false`, lookups give ENOENT and the
  /// file is not listed (`kernel/kho/dt` exists only while KHO is active).
  public var isPresent: @Sendable () -> Bool

  /// A file from its parts.
  ///
  /// - Parameters:
  ///   - mode: permission bits (`0o600`...).
  ///   - size: the size `stat(2)` reports; 4096 by default, as sysfs reports
  ///     for attributes.
  ///   - isPresent: whether the file exists now; always by default.
  ///   - read: what `read(2)` returns, or `nil` for a file nobody can read.
  ///   - write: what `write(2)` does, or `nil` for a file nobody can write.
  public init(
    mode: UInt32,
    size: @escaping @Sendable () -> UInt64 = { 4096 },
    isPresent: @escaping @Sendable () -> Bool = { true },
    read: Reader?,
    write: Writer? = nil
  ) {
    precondition(mode & ~0o777 == 0, "a control file's mode is permission bits only")
    self.mode = mode
    self.size = size
    self.isPresent = isPresent
    self.read = read
    self.write = write
  }

  /// A sysfs-style attribute: every read calls `show` afresh and returns the
  /// part of its text from the read's offset (so `cat` sees one consistent
  /// text, and a read at offset N sees the tail of a fresh `show`).
  ///
  /// ```swift
  /// let dtMax = ControlFile.attribute(mode: 0o600) { Array("0xa00000\n".utf8) }
  /// ```
  ///
  /// - Parameters:
  ///   - mode: permission bits.
  ///   - show: the attribute's current text.
  ///   - store: what a write does; `nil` for a read-only attribute.
  public static func attribute(
    mode: UInt32,
    show: @escaping @Sendable () throws(Errno) -> [UInt8],
    store: Writer? = nil
  ) -> ControlFile {
    ControlFile(
      mode: mode,
      read: { offset, count throws(Errno) in
        slice(try show(), offset: offset, count: count)
      }, write: store)
  }

  /// A file whose writes see their offset: offset 0 starts new content,
  /// later offsets continue it.
  ///
  /// - Parameters:
  ///   - mode: permission bits.
  ///   - show: the file's current text.
  ///   - store: what a write at an offset does.
  public static func offsetAttribute(
    mode: UInt32, show: @escaping @Sendable () throws(Errno) -> [UInt8],
    store: @escaping OffsetWriter
  ) -> ControlFile {
    var file = attribute(
      mode: mode, show: show, store: { (bytes) throws(Errno) in try store(0, bytes) })
    file.writeAt = store
    return file
  }

  /// A write-only trigger, such as `kernel/kexec/execute`: nothing to read.
  ///
  /// - Parameters:
  ///   - mode: permission bits, typically `0o200`.
  ///   - store: what a write does.
  public static func trigger(mode: UInt32 = 0o200, store: @escaping Writer) -> ControlFile {
    ControlFile(mode: mode, read: nil, write: store)
  }

  /// A binary file that exists only while `contents` returns bytes, with
  /// their count as its size (sysfs's binary attributes, such as
  /// `kernel/kho/dt`). Reads past the end return 0 bytes.
  ///
  /// ```swift
  /// let dt = ControlFile.blob(mode: 0o400) { outgoing.isActive ? outgoing.blob : nil }
  /// ```
  ///
  /// - Parameters:
  ///   - mode: permission bits, typically `0o400`.
  ///   - contents: the current bytes, or `nil` while the file is absent.
  public static func blob(
    mode: UInt32,
    contents: @escaping @Sendable () -> [UInt8]?
  ) -> ControlFile {
    ControlFile(
      mode: mode,
      size: { UInt64(contents()?.count ?? 0) },
      isPresent: { contents() != nil },
      read: { offset, count throws(Errno) in
        // It went away between open and read: kernfs gives ENODEV too.
        guard let bytes = contents() else { throw .noSuchDevice }
        return slice(bytes, offset: offset, count: count)
      })
  }

  /// The bytes of `bytes` in `offset..<offset+count`, clamped to its end.
  static func slice(_ bytes: [UInt8], offset: Int, count: Int) -> [UInt8] {
    guard offset >= 0, offset < bytes.count, count > 0 else { return [] }
    return Array(bytes[offset..<min(bytes.count, offset + min(count, bytes.count - offset))])
  }
}
