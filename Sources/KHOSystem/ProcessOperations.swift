import CKHOSystem

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Process calls: exec, spawn, wait, signal, the environment, mounts.
public enum ProcessOperations {
  /// Replaces this process with `path`. Returns only on failure, with its
  /// error.
  ///
  /// The corresponding C function is `execve`.
  public static func exec(path: String, arguments: [String], environment: [String])
    -> SystemCallError
  {
    let result: Result<Int32, SystemCallError> = withCStrings(arguments) { argv in
      withCStrings(environment) { envp in
        systemCall("execve") { execve(path, argv, envp) }
      }
    }
    if case .failure(let error) = result { return error }
    // execve returns only with -1.
    return SystemCallError("execve", .ioError)
  }

  /// Starts `path` as a child whose descriptors are this process's, but for
  /// those marked close-on-exec; `inheriting` are kept open at the same
  /// numbers whatever their flag (dup2 onto itself clears `FD_CLOEXEC` in
  /// the child only, glibc 2.29 and later). Returns the child's pid.
  ///
  /// The corresponding C function is `posix_spawn`.
  ///
  /// - Parameters:
  ///   - path: the executable.
  ///   - arguments: its `argv`, `argv[0]` included.
  ///   - environment: its environment, `KEY=VALUE` each.
  ///   - fds: descriptors kept open at the same numbers.
  ///   - moving: `(from, to)` pairs: `from` becomes the child's `to`
  ///     (inheritable).
  public static func spawn(
    path: String, arguments: [String], environment: [String], inheriting fds: [Int32],
    moving: [(from: Int32, to: Int32)] = []
  ) throws(SystemCallError) -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    for fd in fds { posix_spawn_file_actions_adddup2(&actions, fd, fd) }
    for (from, to) in moving { posix_spawn_file_actions_adddup2(&actions, from, to) }
    var pid: pid_t = 0
    try withCStrings(arguments) { argv in
      withCStrings(environment) { envp in
        errnoReturningCall(
          "posix_spawn",
          {
            posix_spawn(&pid, path, &actions, nil, argv, envp)
          })
      }
    }.get()
    return pid
  }

  /// Waits for the child `pid` to end; its wait status.
  ///
  /// The corresponding C function is `waitpid`.
  public static func wait(for pid: pid_t, options: Int32 = 0) throws(SystemCallError) -> Int32 {
    var status: Int32 = 0
    _ = try systemCall("waitpid") { waitpid(pid, &status, options) }.get()
    return status
  }

  /// Sends `signal` to `pid`.
  ///
  /// The corresponding C function is `kill`.
  public static func signal(_ pid: pid_t, _ signal: Int32) throws(SystemCallError) {
    _ = try systemCall("kill") { kill(pid, signal) }.get()
  }

  /// The environment, `KEY=VALUE` each.
  ///
  /// It reads the C variable `environ`.
  public static func environment() -> [String] {
    var result: [String] = []
    guard var entry = ckho_environ() else { return result }
    while let pointer = entry.pointee {
      result.append(String(cString: pointer))
      entry += 1
    }
    return result
  }

  /// The value of the environment variable `name`.
  ///
  /// The corresponding C function is `getenv`.
  public static func environmentValue(_ name: String) -> String? {
    getenv(name).map { String(cString: $0) }
  }

  /// The soft and hard limits on open descriptors.
  ///
  /// The corresponding C function is `getrlimit(RLIMIT_NOFILE)`.
  public static func openFileLimit() throws(SystemCallError) -> (soft: UInt64, hard: UInt64) {
    var limit = rlimit()
    _ = try systemCall("getrlimit(RLIMIT_NOFILE)") {
      getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }.get()
    return (UInt64(limit.rlim_cur), UInt64(limit.rlim_max))
  }

  /// Sets the soft and hard limits on open descriptors.
  ///
  /// The corresponding C function is `setrlimit(RLIMIT_NOFILE)`.
  public static func setOpenFileLimit(soft: UInt64, hard: UInt64) throws(SystemCallError) {
    var limit = rlimit(rlim_cur: rlim_t(soft), rlim_max: rlim_t(hard))
    _ = try systemCall("setrlimit(RLIMIT_NOFILE)") {
      setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }.get()
  }

  /// Names this thread (at most 15 bytes kept).
  ///
  /// The corresponding C function is `pthread_setname_np`.
  public static func setThreadName(_ name: String) throws(SystemCallError) {
    try errnoReturningCall("pthread_setname_np", { ckho_pthread_setname_self(name) }).get()
  }

  /// Calls `body` with a NULL-terminated `char *[]` of `strings`.
  public static func withCStrings<R>(
    _ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R
  ) -> R {
    let pointers = strings.map { strdup($0) } + [nil]
    defer { for pointer in pointers { free(pointer) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
  }
}

/// Calls on paths.
public enum FileSystem {
  /// The size, mode and blocks of the file at `path`.
  ///
  /// The corresponding C function is `stat`.
  public static func status(_ path: String) throws(SystemCallError) -> FileStatus {
    var info = stat()
    _ = try systemCall("stat") { stat(path, &info) }.get()
    return FileStatus(
      size: Int64(info.st_size), mode: UInt32(info.st_mode), blocks: Int64(info.st_blocks),
      blockSize: Int64(info.st_blksize))
  }

  /// Creates the directory `path` (one level).
  ///
  /// The corresponding C function is `mkdir`.
  public static func makeDirectory(_ path: String, mode: mode_t) throws(SystemCallError) {
    _ = try systemCall("mkdir") { mkdir(path, mode) }.get()
  }

  /// Succeeds if this process may execute `path`.
  ///
  /// The corresponding C function is `access` (`X_OK`).
  public static func checkExecutable(_ path: String) throws(SystemCallError) {
    _ = try systemCall("access") { access(path, X_OK) }.get()
  }

  /// Whether this process may execute `path`.
  ///
  /// The corresponding C function is `access` (`X_OK`).
  public static func isExecutable(_ path: String) -> Bool {
    (try? systemCall("access") { access(path, X_OK) }.get()) != nil
  }
}

/// Mounting, as the control file system needs it.
public enum Mounts {
  /// Mounts `source` of file system `type` at `target`, `nosuid` and
  /// `nodev`, with `options`.
  ///
  /// The corresponding C function is `mount`.
  public static func mount(source: String, target: String, type: String, options: String)
    throws(SystemCallError)
  {
    _ = try systemCall("mount") {
      ckho_mount(source, target, type, ckho_MS_NOSUID | ckho_MS_NODEV, options)
    }.get()
  }

  /// Unmounts `target`; `lazy` detaches it now and cleans up when it is no
  /// longer busy.
  ///
  /// The corresponding C function is `umount2`.
  public static func unmount(_ target: String, lazy: Bool) throws(SystemCallError) {
    _ = try systemCall("umount2") { ckho_umount2(target, lazy ? ckho_MNT_DETACH : 0) }.get()
  }
}

extension ProcessOperations {
  /// Starts a `clone(CLONE_VM)` helper that keeps this process's address
  /// space referenced until `descriptor` (the read end of a pipe) sees EOF,
  /// then exits: an `execve` then leaves tearing the old address space down
  /// to the helper. `stack` must stay mapped until the helper is reaped.
  /// Returns the helper's pid (reap it with ``wait(for:options:)``).
  ///
  /// The corresponding C function is `clone` (through
  /// `ckho_clone_mm_holder`).
  public static func cloneAddressSpaceHolder(
    holding descriptor: FileDescriptor, stack: UnsafeMutableRawBufferPointer
  ) throws(SystemCallError) -> pid_t {
    try systemCall("clone") {
      ckho_clone_mm_holder(descriptor.rawValue, stack.baseAddress, stack.count)
    }.get()
  }
}
