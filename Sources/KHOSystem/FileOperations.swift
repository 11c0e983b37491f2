import CKHOSystem

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

extension FileDescriptor {
  /// Opens `path`.
  ///
  /// - Parameters:
  ///   - path: the file.
  ///   - flags: `O_*` flags; `O_CLOEXEC` is always added.
  ///   - mode: permissions of a file `O_CREAT` makes.
  ///
  /// The corresponding C function is `open`.
  public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o600)
    throws(SystemCallError) -> FileDescriptor
  {
    let fd = try systemCall("open") { Glibc.open(path, flags | O_CLOEXEC, mode) }.get()
    return FileDescriptor(rawValue: fd)
  }

  /// Reads at most `buffer.count` bytes; 0 at end of file.
  ///
  /// The corresponding C function is `read`.
  public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int {
    try systemCall("read") { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }.get()
  }

  /// Reads at most `buffer.count` bytes from file offset `offset`, leaving
  /// the file position alone; 0 at end of file.
  ///
  /// The corresponding C function is `pread`.
  public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64)
    throws(SystemCallError) -> Int
  {
    try systemCall("pread") { pread(rawValue, buffer.baseAddress, buffer.count, off_t(offset)) }
      .get()
  }

  /// Reads at most `count` bytes (from file offset `offset` if given,
  /// leaving the file position alone); fewer at end of file.
  ///
  /// The corresponding C function is `read` (or `pread`).
  public func read(upTo count: Int, at offset: Int64? = nil) throws(SystemCallError) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    let result: Result<Int, SystemCallError> = bytes.withUnsafeMutableBytes { buffer in
      if let offset {
        return systemCall("pread") {
          pread(rawValue, buffer.baseAddress, buffer.count, off_t(offset))
        }
      }
      return systemCall("read") { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
    }
    bytes.removeSubrange(try result.get()...)
    return bytes
  }

  /// Writes at most `bytes.count` bytes; how many were written.
  ///
  /// The corresponding C function is `write`.
  public func write(_ bytes: UnsafeRawBufferPointer) throws(SystemCallError) -> Int {
    try systemCall("write") { Glibc.write(rawValue, bytes.baseAddress, bytes.count) }.get()
  }

  /// Writes at most `bytes.count` bytes of an array, in one call; how many
  /// were written.
  ///
  /// The corresponding C function is `write`.
  public func write(_ bytes: [UInt8]) throws(SystemCallError) -> Int {
    let result: Result<Int, SystemCallError> = bytes.withUnsafeBytes { raw in
      systemCall("write") { Glibc.write(rawValue, raw.baseAddress, raw.count) }
    }
    return try result.get()
  }

  /// Writes all of `bytes`, looping over short writes.
  ///
  /// The corresponding C function is `write`.
  public func writeAll(_ bytes: some Sequence<UInt8>) throws(SystemCallError) {
    let array = Array(bytes)
    var done = 0
    while done < array.count {
      let result: Result<Int, SystemCallError> = array.withUnsafeBytes { raw in
        systemCall("write") { Glibc.write(rawValue, raw.baseAddress! + done, raw.count - done) }
      }
      done += try result.get()
    }
  }

  /// Whether the descriptor is closed by `execve` (`FD_CLOEXEC`).
  ///
  /// The corresponding C function is `fcntl(fd, F_GETFD)`.
  public func isCloseOnExec() throws(SystemCallError) -> Bool {
    try systemCall("fcntl(F_GETFD)") { fcntl(rawValue, F_GETFD) }.get() & FD_CLOEXEC != 0
  }

  /// Sets or clears `FD_CLOEXEC`.
  ///
  /// The corresponding C function is `fcntl(fd, F_SETFD)`.
  public func setCloseOnExec(_ on: Bool) throws(SystemCallError) {
    let flags = try systemCall("fcntl(F_GETFD)") { fcntl(rawValue, F_GETFD) }.get()
    let wanted = on ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC
    guard wanted != flags else { return }
    _ = try systemCall("fcntl(F_SETFD)") { fcntl(rawValue, F_SETFD, wanted) }.get()
  }

  /// Whether the number names an open descriptor.
  ///
  /// The corresponding C function is `fcntl(fd, F_GETFD)`.
  public var isOpen: Bool { (try? isCloseOnExec()) != nil }

  /// Closes the descriptor, ignoring the result: after a failure Linux has
  /// released it all the same, and nothing can be done about it.
  ///
  /// The corresponding C function is `close`.
  public func closeIgnoringErrors() { try? close() }

  /// Waits until the descriptor is readable (or hung up), or for
  /// `timeoutMilliseconds` (-1: no limit); whether it is.
  ///
  /// The corresponding C function is `poll`.
  public func waitReadable(timeoutMilliseconds: Int32) throws(SystemCallError) -> Bool {
    var entry = pollfd(fd: rawValue, events: Int16(POLLIN), revents: 0)
    return try systemCall("poll") { poll(&entry, 1, timeoutMilliseconds) }.get() > 0
  }

  /// A pipe, both ends close-on-exec.
  ///
  /// The corresponding C function is `pipe2` (`O_CLOEXEC`).
  public static func pipe() throws(SystemCallError) -> (read: FileDescriptor, write: FileDescriptor)
  {
    var fds: [Int32] = [-1, -1]
    _ = try systemCall("pipe2") { ckho_pipe2(&fds, O_CLOEXEC) }.get()
    return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
  }

  /// A connected pair of unix stream sockets, both close-on-exec.
  ///
  /// The corresponding C function is `socketpair` (`AF_UNIX`,
  /// `SOCK_STREAM | SOCK_CLOEXEC`).
  public static func socketPair() throws(SystemCallError) -> (FileDescriptor, FileDescriptor) {
    var fds: [Int32] = [-1, -1]
    _ = try systemCall("socketpair") {
      socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)
    }.get()
    return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
  }
}

/// The fds open in this process (above 2 included, 0...2 too), sorted.
///
/// Probes each slot of the fd table with `fcntl(F_GETFD)`, up to the
/// table's size (`FDSize` in `/proc/self/status`, a power of two just past
/// the highest fd ever open). Listing `/proc/self/fd` instead makes the
/// kernel build a directory entry per fd: with 10,000 connections handed
/// over that took 20 ms of an upgrade's pause, the probes about 1 ms.
/// Falls back to the listing where the table size cannot be read.
///
/// The corresponding C functions are `fcntl(fd, F_GETFD)`, and `opendir`
/// and `readdir` for the fallback.
public func openDescriptors() -> [Int32] {
  guard let size = fileDescriptorTableSize() else { return listedDescriptors() }
  var fds: [Int32] = []
  for fd in 0..<size where fcntl(fd, F_GETFD) >= 0 { fds.append(fd) }
  return fds
}

/// `FDSize` from `/proc/self/status`: fds are below it. Nil if unreadable
/// or implausible.
private func fileDescriptorTableSize() -> Int32? {
  let fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC)
  guard fd >= 0 else { return nil }
  defer { close(fd) }
  var bytes = [UInt8](repeating: 0, count: 4096)
  let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
  guard count > 0 else { return nil }
  let text = String(decoding: bytes[..<count], as: UTF8.self)
  guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("FDSize:") }),
    let size = Int32(
      line.dropFirst("FDSize:".count).trimmingPrefix(while: { $0 == " " || $0 == "\t" })),
    size > 0, size <= 1 << 24
  else { return nil }
  return size
}

/// The fds listed in `/proc/self/fd`, without the listing's own; sorted.
private func listedDescriptors() -> [Int32] {
  guard let directory = opendir("/proc/self/fd") else { return [] }
  defer { closedir(directory) }
  let own = dirfd(directory)
  var fds: [Int32] = []
  while let entry = readdir(directory) {
    // The name is read in place, up to its NUL: copying all of `d_name`
    // (256 bytes) reads past a short last record of the kernel's buffer,
    // which crashed at 10,000 open descriptors.
    let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
    let name = String(
      cString: UnsafeRawPointer(entry).advanced(by: nameOffset).assumingMemoryBound(to: CChar.self))
    if let fd = Int32(name), fd != own { fds.append(fd) }
  }
  return fds.sorted()
}

/// Waiting on several descriptors.
public enum Poll {
  /// Waits until one of `entries` has an event, or for
  /// `timeoutMilliseconds` (-1: no limit); how many have one (their
  /// `revents` set).
  ///
  /// The corresponding C function is `poll`.
  public static func wait(_ entries: inout [pollfd], timeoutMilliseconds: Int32)
    throws(SystemCallError) -> Int
  {
    let count = entries.count
    return Int(
      try systemCall("poll") { poll(&entries, nfds_t(count), timeoutMilliseconds) }.get())
  }
}
