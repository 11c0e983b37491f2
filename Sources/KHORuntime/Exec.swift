import CKHORuntime

#if canImport(Glibc)
  import Glibc
#endif

/// The next image: an executable with its arguments and environment, the
/// user-space `kexec -l` payload.
public struct NextImage: Sendable, Equatable {
  /// Path of the executable.
  public var path: String
  /// `argv`, `argv[0]` included.
  public var arguments: [String]
  /// The environment, `KEY=VALUE`; the runtime adds its own variables.
  public var environment: [String]

  public init(
    path: String, arguments: [String]? = nil, environment: [String] = Environment.current()
  ) {
    self.path = path
    self.arguments = arguments ?? [path]
    self.environment = environment
  }

  /// This very executable (`/proc/self/exe`) with its current arguments.
  public static func current(arguments: [String] = CommandLine.arguments) -> NextImage {
    NextImage(path: currentExecutablePath(), arguments: arguments)
  }

  static func currentExecutablePath() -> String {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    if n <= 0 { return CommandLine.arguments[0] }
    return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }
}

/// `execve` and `posix_spawn` keeping exactly a chosen set of fds open.
enum ProcessLauncher {
  /// Replaces this process with `image`, keeping `fds` open across the
  /// exec. Returns only on failure, with every fd's close-on-exec flag as it
  /// was before the call.
  ///
  /// The corresponding C function is `execve`.
  static func execInPlace(_ image: NextImage, keeping fds: [Int32]) -> SystemCallError {
    var saved: [(Int32, Int32)] = []
    for fd in fds {
      let flags = fcntl(fd, F_GETFD)
      if flags == -1 {
        let error = SystemCallError("fcntl(F_GETFD)", errno: errno)
        restore(saved)
        return error
      }
      saved.append((fd, flags))
      _ = fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC)
    }
    // Every other fd (an accepted connection, say) must not leak into the
    // next image, which would hold the connection open without serving it.
    saved += closeOnExecExcept(fds)
    // Buffered output would be lost at exec.
    fflush(nil)
    // Without a holder the exec still works, only slower.
    let holder = try? AddressSpaceHolder.start()
    var environment = image.environment
    if let holder { environment.append("\(AddressSpaceHolder.environmentName)=\(holder.pid)") }
    let error = withCStrings(image.arguments) { argv in
      withCStrings(environment) { envp in
        _ = execve(image.path, argv, envp)
        return SystemCallError("execve(\(image.path))", errno: errno)
      }
    }
    holder?.stop()
    restore(saved)
    return error
  }

  private static func restore(_ saved: [(Int32, Int32)]) {
    for (fd, flags) in saved { _ = fcntl(fd, F_SETFD, flags) }
  }

  /// Sets FD_CLOEXEC on every open fd above stderr that is not in `keep`
  /// and lacks it; returns those fds with their previous flags, for
  /// `restore`.
  private static func closeOnExecExcept(_ keep: [Int32]) -> [(Int32, Int32)] {
    var changed: [(Int32, Int32)] = []
    for fd in openDescriptors() where fd > 2 && !keep.contains(fd) {
      let flags = fcntl(fd, F_GETFD)
      guard flags != -1, flags & FD_CLOEXEC == 0 else { continue }
      if fcntl(fd, F_SETFD, flags | FD_CLOEXEC) == 0 { changed.append((fd, flags)) }
    }
    return changed
  }

  /// Starts `image` as a child keeping `fds` open (at the same numbers) and
  /// nothing else but stdin, stdout and stderr.
  ///
  /// The corresponding C function is `posix_spawn`.
  static func spawn(_ image: NextImage, keeping fds: [Int32]) throws(SystemCallError) -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    for fd in fds {
      // dup2 onto itself clears FD_CLOEXEC in the child only (glibc >= 2.29).
      posix_spawn_file_actions_adddup2(&actions, fd, fd)
    }
    // Every other fd must not leak into the child either: it would keep
    // this image's connections open after it exits.
    let saved = closeOnExecExcept(fds)
    defer { restore(saved) }
    var pid: pid_t = 0
    let rc = withCStrings(image.arguments) { argv in
      withCStrings(image.environment) { envp in
        posix_spawn(&pid, image.path, &actions, nil, argv, envp)
      }
    }
    if rc != 0 { throw SystemCallError("posix_spawn(\(image.path))", errno: rc) }
    return pid
  }

  /// Calls `body` with a NULL-terminated `char *[]` of `strings`.
  static func withCStrings<R>(
    _ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R
  ) -> R {
    let pointers = strings.map { strdup($0) } + [nil]
    defer { for p in pointers { free(p) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
  }
}

/// A helper that keeps this process's address space alive across an
/// `execve` in place, so that tearing down its page tables (about 200 ms for
/// a populated 4 GiB arena in 4 KiB pages, measured by
/// `../shared/floor/exec_floor.c`) happens in the helper after the exec, not
/// on the path to the next image's `main` (under 1 ms then).
///
/// The helper is a `clone(CLONE_VM)` child that holds nothing but the read
/// end of a pipe whose write end is close-on-exec here: the exec (or
/// ``stop()`` after a failed one, or this process's death) closes it, and
/// the helper exits. The next image reaps it (``reapInherited()``): nothing
/// of it outlives the upgrade.
struct AddressSpaceHolder {
  /// Tells the next image which child to reap.
  static let environmentName = "KHO_MM_HOLDER"
  static let stackSize = 64 << 10

  let pid: pid_t
  private let writeEnd: Int32
  private let stack: UnsafeMutableRawPointer

  /// The corresponding C functions are `pipe2`, `mmap` and `clone`.
  static func start() throws(SystemCallError) -> AddressSpaceHolder {
    var fds: [Int32] = [-1, -1]
    _ = try retryingOnInterrupt("pipe2") { ckho_pipe_cloexec(&fds) }
    guard
      let stack = mmap(
        nil, stackSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0),
      stack != MAP_FAILED
    else {
      let error = SystemCallError("mmap", errno: errno)
      close(fds[0])
      close(fds[1])
      throw error
    }
    var err: Int32 = 0
    let pid = ckho_clone_mm_holder(fds[0], stack, stackSize, &err)
    close(fds[0])
    guard pid > 0 else {
      close(fds[1])
      munmap(stack, stackSize)
      throw SystemCallError("clone(CLONE_VM)", errno: err)
    }
    return AddressSpaceHolder(pid: pid, writeEnd: fds[1], stack: stack)
  }

  /// After a failed exec: lets the helper go and reaps it.
  ///
  /// The corresponding C functions are `close`, `waitpid` and `munmap`.
  func stop() {
    close(writeEnd)
    _ = reap(pid)
    munmap(stack, Self.stackSize)
  }

  /// In the next image: reaps the previous image's helper, if it left one,
  /// on a thread of its own (it exits once the old address space is torn
  /// down, which takes as long as the exec would have). Removes the
  /// variable from the environment.
  static func reapInherited() {
    guard let value = Environment.value(of: environmentName) else { return }
    unsetenv(environmentName)
    guard let pid = pid_t(value), pid > 0 else { return }
    do {
      try DetachedThread.start(name: "kho-reap-mm") { _ = reap(pid) }
    } catch {
      // No thread: reap it here rather than leave a zombie.
      _ = reap(pid)
    }
  }
}

/// Waits for the child `pid` to end (`waitpid`, EINTR retried); its wait
/// status, or nil if it is not a child of this process.
func reap(_ pid: pid_t) -> Int32? {
  var status: Int32 = 0
  while waitpid(pid, &status, 0) < 0 {
    if errno != EINTR { return nil }
  }
  return status
}

/// The fds open in this process, from `/proc/self/fd` (`opendir`,
/// `readdir`), without the one the listing itself uses; sorted.
func openDescriptors() -> [Int32] {
  guard let directory = opendir("/proc/self/fd") else { return [] }
  defer { closedir(directory) }
  let own = dirfd(directory)
  var fds: [Int32] = []
  while let entry = readdir(directory) {
    let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
      String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
    }
    if let fd = Int32(name), fd != own { fds.append(fd) }
  }
  return fds.sorted()
}
