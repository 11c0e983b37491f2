import CFUSEKernel

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
    guard getcwd(&buffer, buffer.count) != nil else { throw .system("getcwd", errno: ERANGE) }
    let cwd = String(
      decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return cwd == "/" ? "/" + path : cwd + "/" + path
  }

  /// Clears a mount left at `path` by a service that was killed: its
  /// connection is gone, so `stat` fails with ENOTCONN, and a new mount
  /// there would hide nothing but confuse everyone. Creates `path` (one
  /// level, mode 0755) if it does not exist.
  static func prepareMountPoint(_ path: String, fusermount: String?) throws(ControlMountError) {
    switch statErrno(path) {
    case 0: return
    case ENOTCONN, ECONNABORTED:
      try unmount(path, lazy: true, fusermount: fusermount)
    case ENOENT:
      _ = try systemCall("mkdir \(path)") { mkdir(path, 0o755) }
    case let error:
      throw .system("stat \(path)", errno: error)
    }
  }

  /// Mounts with mount(2) on a fresh /dev/fuse fd, which it returns.
  static func mountDirect(at path: String, name: String, allowOther: Bool) throws(ControlMountError)
    -> Int32
  {
    let fd = try systemCall("open /dev/fuse") { open("/dev/fuse", O_RDWR | O_CLOEXEC) }
    var options = "fd=\(fd),rootmode=40000,user_id=\(geteuid()),group_id=\(getegid())"
    options += ",default_permissions" + (allowOther ? ",allow_other" : "")
    do {
      try check("mount \(path)", cfuse_mount(name, path, name, options))
    } catch {
      closeDescriptor(fd)
      throw error
    }
    return fd
  }

  /// Mounts through `fusermount3`, which opens /dev/fuse, mounts, and sends
  /// the fd back over the socket named by `_FUSE_COMMFD`, as libfuse does.
  static func mountWithFusermount(
    at path: String, name: String, allowOther: Bool, fusermount: String
  ) throws(ControlMountError) -> Int32 {
    var pair: [Int32] = [-1, -1]
    try check("socketpair", cfuse_socketpair_cloexec(&pair))
    defer { closeDescriptor(pair[0]) }
    let options =
      "default_permissions,fsname=\(name),subtype=\(name)" + (allowOther ? ",allow_other" : "")
    let child: pid_t
    do {
      child = try spawn(fusermount, ["-o", options, "--", path], commFd: pair[1])
    } catch {
      closeDescriptor(pair[1])
      throw error
    }
    closeDescriptor(pair[1])
    var fd: Int32 = -1
    let received = cfuse_receive_fd(pair[0], &fd)
    let status = try wait(child)
    if received != 0 {
      if status != 0 { throw .fusermount(status: status) }
      throw .system("receive /dev/fuse fd from fusermount3", errno: received)
    }
    return fd
  }

  /// Unmounts `path`: umount2(2) as root, `fusermount3 -u` otherwise. A
  /// busy mount (a caller still has a file open) is detached lazily.
  static func unmount(_ path: String, lazy: Bool, fusermount: String?) throws(ControlMountError) {
    if geteuid() == 0 {
      let result = cfuse_umount(path, lazy ? 1 : 0)
      if result == EBUSY && !lazy { return try unmount(path, lazy: true, fusermount: fusermount) }
      try check("umount \(path)", result)
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
    return fusermountCandidates.first { access($0, X_OK) == 0 }
  }

  /// Starts `executable` with `arguments` and a minimal environment; with
  /// `commFd`, that fd becomes the child's fd 3 and `_FUSE_COMMFD=3`.
  static func spawn(_ executable: String, _ arguments: [String], commFd: Int32? = nil)
    throws(ControlMountError) -> pid_t
  {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    var environment = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    if let commFd {
      // dup2 onto 3 also clears close-on-exec when commFd is already 3.
      posix_spawn_file_actions_adddup2(&actions, commFd, 3)
      environment.append("_FUSE_COMMFD=3")
    }
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    let envp = environment.map { strdup($0) } + [nil]
    defer { (argv + envp).forEach { free($0) } }
    var pid = pid_t()
    let result = posix_spawn(&pid, executable, &actions, nil, argv, envp)
    try check("posix_spawn \(executable)", result)
    return pid
  }

  /// Waits for `child` and returns its exit status (128 + signal if killed).
  static func wait(_ child: pid_t) throws(ControlMountError) -> Int32 {
    var status: Int32 = 0
    _ = try systemCall("waitpid") { waitpid(child, &status, 0) }
    // WIFEXITED and WEXITSTATUS are macros Swift cannot see.
    return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
  }
}
