import KHOSystem

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

  /// An image: `path`, its `argv` (`[path]` if nil) and its environment (this process's by default).
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
    (try? FileDescriptor.linkTarget("/proc/self/exe")) ?? CommandLine.arguments[0]
  }
}

/// `execve` and `posix_spawn` keeping exactly a chosen set of fds open.
enum ProcessLauncher {
  /// Replaces this process with `image`, keeping `fds` open across the
  /// exec. Returns only on failure, with every fd's close-on-exec flag as it
  /// was before the call.
  ///
  /// The corresponding C function is `execve`.
  ///
  /// `holder` keeps the address space across the exec (see
  /// ``AddressSpaceHolder``); it is stopped if the exec fails. Without one
  /// the exec still works, only slower.
  static func execInPlace(
    _ image: NextImage, keeping fds: [Int32], holder: AddressSpaceHolder?
  ) -> SystemCallError {
    var cleared: [Int32] = []
    for fd in fds {
      do {
        if try FileDescriptor(rawValue: fd).isCloseOnExec() {
          try FileDescriptor(rawValue: fd).setCloseOnExec(false)
          cleared.append(fd)
        }
      } catch {
        restore(cleared, closeOnExec: true)
        return error
      }
    }
    // Every other fd (an accepted connection, say) must not leak into the
    // next image, which would hold the connection open without serving it.
    let marked = closeOnExecExcept(fds)
    // Buffered output would be lost at exec.
    fflush(nil)
    var environment = image.environment
    if let holder { environment.append("\(AddressSpaceHolder.environmentName)=\(holder.pid)") }
    var error = ProcessOperations.exec(
      path: image.path, arguments: image.arguments, environment: environment)
    error.function = "execve(\(image.path))"
    holder?.stop()
    restore(cleared, closeOnExec: true)
    restore(marked, closeOnExec: false)
    return error
  }

  private static func restore(_ fds: [Int32], closeOnExec: Bool) {
    for fd in fds { try? FileDescriptor(rawValue: fd).setCloseOnExec(closeOnExec) }
  }

  /// Sets FD_CLOEXEC on every open fd above stderr that is not in `keep`
  /// and lacks it; returns those fds, for `restore`.
  private static func closeOnExecExcept(_ keep: [Int32]) -> [Int32] {
    var changed: [Int32] = []
    for fd in openDescriptors() where fd > 2 && !keep.contains(fd) {
      let descriptor = FileDescriptor(rawValue: fd)
      guard let on = try? descriptor.isCloseOnExec(), !on else { continue }
      if (try? descriptor.setCloseOnExec(true)) != nil { changed.append(fd) }
    }
    return changed
  }

  /// Starts `image` as a child keeping `fds` open (at the same numbers) and
  /// nothing else but stdin, stdout and stderr.
  ///
  /// The corresponding C function is `posix_spawn`.
  static func spawn(_ image: NextImage, keeping fds: [Int32]) throws(SystemCallError) -> pid_t {
    // Every other fd must not leak into the child either: it would keep
    // this image's connections open after it exits.
    let marked = closeOnExecExcept(fds)
    defer { restore(marked, closeOnExec: false) }
    do {
      return try ProcessOperations.spawn(
        path: image.path, arguments: image.arguments, environment: image.environment,
        inheriting: fds)
    } catch {
      throw SystemCallError("posix_spawn(\(image.path))", error.errno)
    }
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
    let pipe = try FileDescriptor.pipe()
    defer { pipe.read.closeIgnoringErrors() }
    let stack: UnsafeMutableRawPointer
    do { stack = try MemoryMapping.mapAnonymous(length: stackSize, stack: true) } catch {
      pipe.write.closeIgnoringErrors()
      throw error
    }
    do {
      let pid = try ProcessOperations.cloneAddressSpaceHolder(
        holding: pipe.read, stack: UnsafeMutableRawBufferPointer(start: stack, count: stackSize))
      return AddressSpaceHolder(pid: pid, writeEnd: pipe.write.rawValue, stack: stack)
    } catch {
      pipe.write.closeIgnoringErrors()
      try? MemoryMapping.unmap(stack, length: stackSize)
      throw error
    }
  }

  /// After a failed exec: lets the helper go and reaps it.
  ///
  /// The corresponding C functions are `close`, `waitpid` and `munmap`.
  func stop() {
    FileDescriptor(rawValue: writeEnd).closeIgnoringErrors()
    _ = reap(pid)
    try? MemoryMapping.unmap(stack, length: Self.stackSize)
  }

  /// In the next image: reaps the previous image's helper, if it left one,
  /// on a thread of its own (it exits once the old address space is torn
  /// down, which takes as long as the exec would have). Removes the
  /// variable from the environment.
  static func reapInherited() {
    guard let value = Environment.take(environmentName) else { return }
    guard let pid = pid_t(value), pid > 0 else { return }
    do {
      try SystemThread.detached(name: "kho-reap-mm") { _ = reap(pid) }
    } catch {
      // No thread: reap it here rather than leave a zombie.
      _ = reap(pid)
    }
  }
}

/// Waits for the child `pid` to end (EINTR retried); its wait status, or
/// nil if it is not a child of this process.
func reap(_ pid: pid_t) -> Int32? {
  try? ProcessOperations.wait(for: pid)
}
