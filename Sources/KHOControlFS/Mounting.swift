import CFUSEKernel
import KHOSystem

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Mounting and unmounting a FUSE file system: directly as root, through
/// the setuid `fusermount3` otherwise.
enum Mounting {
  /// Where Debian and others install `fusermount3`.
  static let fusermountCandidates = [
    "/usr/bin/fusermount3", "/bin/fusermount3", "/usr/local/bin/fusermount3",
  ]

  /// An absolute form of `path`: relative to the current directory now, so
  /// the final unmount does not depend on where the process is by then.
  static func absolute(_ path: String) throws(ControlMountError) -> String {
    if path.hasPrefix("/") { return path }
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    guard getcwd(&buffer, buffer.count) != nil else {
      throw .system(SystemCallError("getcwd", .outOfRange))
    }
    let cwd = String(
      decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return cwd == "/" ? "/" + path : cwd + "/" + path
  }

  /// Clears a mount left at `path` by a service that was killed: its
  /// connection is gone, so `stat` fails with ENOTCONN, and a new mount
  /// there would hide nothing but confuse everyone. Creates `path` (one
  /// level, mode 0755) if it does not exist.
  static func prepareMountPoint(_ path: String, fusermount: String?) throws(ControlMountError) {
    do throws(SystemCallError) {
      _ = try FileSystem.status(path)
    } catch {
      switch error.errno.rawValue {
      case ENOTCONN, ECONNABORTED:
        try unmount(path, lazy: true, fusermount: fusermount)
      case ENOENT:
        try checked { () throws(SystemCallError) in try FileSystem.makeDirectory(path, mode: 0o755)
        }
      default:
        throw .system(error)
      }
    }
  }

  /// Mounts with mount(2) on a fresh /dev/fuse fd, which it returns.
  static func mountDirect(at path: String, name: String, allowOther: Bool) throws(ControlMountError)
    -> Int32
  {
    let fd = try checked { () throws(SystemCallError) in
      try FileDescriptor.open("/dev/fuse", O_RDWR)
    }
    var options = "fd=\(fd.rawValue),rootmode=40000,user_id=\(geteuid()),group_id=\(getegid())"
    options += ",default_permissions" + (allowOther ? ",allow_other" : "")
    do {
      try Mounts.mount(source: name, target: path, type: "fuse.\(name)", options: options)
    } catch {
      fd.closeIgnoringErrors()
      throw .system(error)
    }
    return fd.rawValue
  }

  /// Mounts through `fusermount3`, which opens /dev/fuse, mounts, and sends
  /// the fd back over the socket named by `_FUSE_COMMFD`, as libfuse does.
  static func mountWithFusermount(
    at path: String, name: String, allowOther: Bool, fusermount: String
  ) throws(ControlMountError) -> Int32 {
    let pair = try checked { () throws(SystemCallError) in try FileDescriptor.socketPair() }
    defer { pair.0.closeIgnoringErrors() }
    let options =
      "default_permissions,fsname=\(name),subtype=\(name)" + (allowOther ? ",allow_other" : "")
    let child: pid_t
    do {
      child = try spawn(fusermount, ["-o", options, "--", path], commFd: pair.1.rawValue)
    } catch {
      pair.1.closeIgnoringErrors()
      throw error
    }
    pair.1.closeIgnoringErrors()
    let received = receiveDescriptor(pair.0)
    let status = try wait(child)
    switch received {
    case .success(let fd): return fd.rawValue
    case .failure(let error):
      if status != 0 { throw .fusermount(status: status) }
      throw .system(error)
    }
  }

  /// The /dev/fuse fd fusermount3 sends: one message with one fd.
  /// ECONNRESET: it closed without sending; EPROTO: a message without one.
  private static func receiveDescriptor(_ socket: FileDescriptor) -> Result<
    FileDescriptor, SystemCallError
  > {
    var byte: UInt8 = 0
    let received = withUnsafeMutableBytes(of: &byte) { buffer in
      Result { () throws(SystemCallError) in
        try socket.receiveMessage(into: buffer, maxDescriptors: 1)
      }
    }
    switch received {
    case .failure(let error): return .failure(error)
    case .success(let message):
      if let fd = message.descriptors.first { return .success(fd) }
      let errno: Errno =
        message.byteCount == 0 ? Errno(rawValue: ECONNRESET) : Errno(rawValue: EPROTO)
      return .failure(SystemCallError("recvmsg", errno))
    }
  }

  /// Unmounts `path`: umount2(2) as root, `fusermount3 -u` otherwise. A
  /// busy mount (a caller still has a file open) is detached lazily.
  static func unmount(_ path: String, lazy: Bool, fusermount: String?) throws(ControlMountError) {
    if geteuid() == 0 {
      do { try Mounts.unmount(path, lazy: lazy) } catch {
        if error.errno == .resourceBusy && !lazy {
          return try unmount(path, lazy: true, fusermount: fusermount)
        }
        throw .system(error)
      }
      return
    }
    guard let fusermount else { throw .fusermountNotFound }
    let status = try wait(spawn(fusermount, ["-u", "-q"] + (lazy ? ["-z"] : []) + ["--", path]))
    if status != 0 && !lazy { return try unmount(path, lazy: true, fusermount: fusermount) }
    if status != 0 { throw .fusermount(status: status) }
  }

  /// The `fusermount3` to use: the given one, else the first installed.
  static func findFusermount(_ given: String?) -> String? {
    if let given { return given }
    return fusermountCandidates.first { FileSystem.isExecutable($0) }
  }

  /// Starts `executable` with `arguments` and a minimal environment; with
  /// `commFd`, that fd becomes the child's fd 3 and `_FUSE_COMMFD=3`.
  static func spawn(_ executable: String, _ arguments: [String], commFd: Int32? = nil)
    throws(ControlMountError) -> pid_t
  {
    var environment = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    if commFd != nil { environment.append("_FUSE_COMMFD=3") }
    return try checked { () throws(SystemCallError) in
      try ProcessOperations.spawn(
        path: executable, arguments: [executable] + arguments, environment: environment,
        inheriting: [], moving: commFd.map { [(from: $0, to: Int32(3))] } ?? [])
    }
  }

  /// Waits for `child` and returns its exit status (128 + signal if killed).
  static func wait(_ child: pid_t) throws(ControlMountError) -> Int32 {
    let status = try checked { () throws(SystemCallError) in
      try ProcessOperations.wait(for: child)
    }
    // WIFEXITED and WEXITSTATUS are macros Swift cannot see.
    return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
  }
}
