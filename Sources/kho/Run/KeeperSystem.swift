import CKHOSystem
import KHOSystem

#if canImport(Glibc)
  import Glibc
#endif

/// One datagram read from the notify socket.
struct NotifyDatagram {
  /// The datagram's full length; more than the buffer when truncated.
  var length: Int
  /// The fds it carried (owned by whoever holds this value: close or keep).
  var fds: [Int32]
  /// The sender's pid and uid (`SCM_CREDENTIALS`), or -1 without them.
  var pid: pid_t
  var uid: uid_t
  /// `MSG_CTRUNC`: the kernel had to drop control data.
  var controlTruncated: Bool
}

/// The keeper's system calls: each a thin wrapper naming the C call it wraps,
/// all through KHOSystem's `systemCall`, the one place that retries on EINTR.
enum KeeperSystem {
  /// `CLOCK_MONOTONIC`, in seconds.
  ///
  /// The corresponding C function is `clock_gettime`.
  static func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
  }

  /// Writes `line` and a newline to standard error, ignoring failures (a
  /// closed stderr must not stop the keeper; SIGPIPE is ignored).
  ///
  /// The corresponding C function is `write`.
  static func log(_ line: String) {
    var bytes = Array("kho run: \(line)\n".utf8)
    if bytes.count > 1024 { bytes = Array(bytes.prefix(1023)) + [UInt8(ascii: "\n")] }
    bytes.withUnsafeBytes { buf in
      var done = 0
      while done < buf.count {
        let n = try? systemCall("write") {
          let r = write(STDERR_FILENO, buf.baseAddress! + done, buf.count - done)
          return r
        }.get()
        guard let n, n > 0 else { return }
        done += n
      }
    }
  }

  /// Ignores SIGPIPE, so that writing to a closed stderr or socket cannot
  /// kill the keeper (the child gets SIG_DFL back before exec).
  ///
  /// The corresponding C function is `signal`.
  static func ignoreSIGPIPE() {
    _ = signal(SIGPIPE, SIG_IGN)
  }

  /// Makes the keeper a child subreaper: orphaned descendants (the successor
  /// of an overlapped handover, once its parent exited) become its children.
  ///
  /// The corresponding C function is `prctl(PR_SET_CHILD_SUBREAPER)`.
  static func setChildSubreaper() throws(SystemCallError) {
    _ = try systemCall("prctl(PR_SET_CHILD_SUBREAPER)") { ckho_set_child_subreaper() }.get()
  }

  /// Blocks `signals` and returns a non-blocking signalfd that reads them.
  ///
  /// The corresponding C functions are `sigprocmask` and `signalfd`.
  static func signalFD(_ signals: [Int32]) throws(SystemCallError) -> Int32 {
    try systemCall("signalfd") {
      signals.withUnsafeBufferPointer { ckho_signalfd($0.baseAddress, Int32($0.count)) }
    }.get()
  }

  /// The next pending signal on `fd`, or `nil` when none is.
  ///
  /// The corresponding C function is `read` (of a `signalfd_siginfo`).
  static func readSignal(_ fd: Int32) throws(SystemCallError) -> Int32? {
    switch systemCall("read(signalfd)", { ckho_signalfd_read(fd) }) {
    case .success(let signal): return signal
    case .failure(let error) where error.errno == .tryAgain: return nil
    case .failure(let error): throw error
    }
  }

  /// A new notify socket, bound to a fresh abstract name the kernel picks,
  /// with `SO_PASSCRED` on (every datagram then carries its sender's
  /// credentials). Returns the socket and its name (`@` + name is what
  /// `NOTIFY_SOCKET` says).
  ///
  /// The corresponding C functions are `socket`, `bind`, `getsockname` and
  /// `setsockopt(SO_PASSCRED)`.
  static func notifySocket() throws(SystemCallError) -> (fd: Int32, name: String) {
    var name = [CChar](repeating: 0, count: 108)
    let fd = try systemCall("socket/bind(AF_UNIX, SOCK_DGRAM)") {
      name.withUnsafeMutableBufferPointer {
        ckho_notify_socket_autobind($0.baseAddress, $0.count)
      }
    }.get()
    var on: Int32 = 1
    do {
      _ = try systemCall("setsockopt(SO_PASSCRED)") {
        let r = setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, socklen_t(MemoryLayout<Int32>.size))
        return r
      }.get()
    } catch {
      FileDescriptor(rawValue: fd).closeIgnoringErrors()
      throw error
    }
    let text = name.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    return (fd, text)
  }

  /// Reads one datagram from the notify socket into `buffer`, with its fds
  /// (at most the kernel's 253) and credentials; `nil` when none is queued.
  ///
  /// The corresponding C function is `recvmsg`.
  static func receive(_ sock: Int32, into buffer: UnsafeMutableRawBufferPointer)
    throws(SystemCallError) -> NotifyDatagram?
  {
    let message: ReceivedMessage
    do {
      message = try FileDescriptor(rawValue: sock).receiveMessage(
        into: buffer, flags: Int32(MSG_DONTWAIT) | Int32(MSG_TRUNC))
    } catch  where error.errno == .tryAgain {
      return nil
    }
    return NotifyDatagram(
      length: message.byteCount, fds: message.descriptors.map(\.rawValue),
      pid: message.senderPID ?? -1, uid: message.senderUID ?? 0,
      controlTruncated: message.descriptorsTruncated)
  }

  /// A pidfd for `pid` (close-on-exec): readable once the process exits,
  /// whoever its parent is.
  ///
  /// The corresponding C function is `pidfd_open`.
  static func pidfdOpen(_ pid: pid_t) throws(SystemCallError) -> Int32 {
    try systemCall("pidfd_open") { ckho_pidfd_open(pid) }.get()
  }

  /// The pid of a child that has exited, left unreaped (so its `/proc`
  /// entry and its queued datagrams are still there), or `nil` if none.
  ///
  /// The corresponding C function is `waitid(P_ALL, WEXITED | WNOHANG | WNOWAIT)`.
  static func exitedChild() -> pid_t? {
    guard let pid = try? systemCall("waitid", { ckho_waitid_exited_nowait() }).get() else {
      return nil
    }
    return pid > 0 ? pid : nil
  }

  /// Reaps `pid` if it has exited: its status, `nil` if it is still running.
  /// Throws ECHILD for a process that is not the keeper's child.
  ///
  /// The corresponding C function is `waitpid(pid, WNOHANG)`.
  static func reap(_ pid: pid_t) throws(SystemCallError) -> ExitStatus? {
    var status: Int32 = 0
    let r = try systemCall("waitpid") {
      let r = waitpid(pid, &status, WNOHANG)
      return r
    }.get()
    return r == pid ? ExitStatus(waitStatus: status) : nil
  }

  /// Sends `signal` to `pid`; a process already gone is not an error.
  ///
  /// The corresponding C function is `kill`.
  static func kill(_ pid: pid_t, _ signal: Int32) {
    _ = try? systemCall("kill") {
      let r = Glibc.kill(pid, signal)
      return r
    }.get()
  }

  /// Closes `fd`; EINTR is not retried (Linux has closed it anyway).
  ///
  /// The corresponding C function is `close`.
  static func close(_ fd: Int32) {
    FileDescriptor(rawValue: fd).closeIgnoringErrors()
  }

  /// Waits until one of `fds` is ready or `timeout` seconds passed (`nil`:
  /// forever); fills in each `revents`.
  ///
  /// The corresponding C function is `poll`.
  static func poll(_ fds: inout [pollfd], timeout: Double?) throws(SystemCallError) {
    let ms: Int32
    if let timeout {
      ms = Int32(min(max((timeout * 1000).rounded(.up), 0), 3_600_000))
    } else {
      ms = -1
    }
    _ = try systemCall("poll") {
      let r = fds.withUnsafeMutableBufferPointer {
        Glibc.poll($0.baseAddress, nfds_t($0.count), ms)
      }
      return r
    }.get()
  }

  /// The parent pid of `pid` from `/proc/PID/stat` (a zombie's too), or
  /// `nil` if it cannot be read.
  ///
  /// The corresponding C functions are `open` and `read`.
  static func parentPID(of pid: pid_t) -> pid_t? {
    guard let fd = try? FileDescriptor.open("/proc/\(pid)/stat", O_RDONLY) else { return nil }
    defer { fd.closeIgnoringErrors() }
    guard let buf = try? fd.read(upTo: 512) else { return nil }
    let n = buf.count
    // "PID (COMM) STATE PPID ...": COMM may hold anything, so parse after
    // the last ')'.
    guard n > 0, let close = buf[..<n].lastIndex(of: UInt8(ascii: ")")) else { return nil }
    let fields = buf[(close + 1)..<n].split(separator: UInt8(ascii: " "))
    guard fields.count >= 2 else { return nil }
    return pid_t(String(decoding: fields[1], as: UTF8.self))
  }

  /// Starts `path` with `arguments` and `environment` (one entry of which is
  /// `LISTEN_PID=`, filled in by the child with its own pid, when `fds` is
  /// not empty), `fds` moved to 3, 4, ... in the child. Returns once
  /// `execve` succeeded.
  ///
  /// The corresponding C functions are `fork`, `dup2` and `execve`
  /// (`ckho_spawn_listen`).
  static func spawn(
    _ path: String, _ arguments: [String], _ environment: [String], fds: [Int32]
  ) throws(SystemCallError) -> pid_t {
    let argv = arguments.map { strdup($0) } + [nil]
    var envp = environment.map { strdup($0) }
    // The child overwrites the placeholder's copy in its own memory with
    // its pid (room for 20 digits and the NUL).
    var listenPID: UnsafeMutablePointer<CChar>? = nil
    if !fds.isEmpty, let entry = strdup("LISTEN_PID=" + String(repeating: "0", count: 20)) {
      listenPID = entry + "LISTEN_PID=".utf8.count
      envp.append(entry)
    }
    envp.append(nil)
    defer {
      for p in argv { free(p) }
      for p in envp { free(p) }
    }
    var scratch = [Int32](repeating: -1, count: max(fds.count, 1))
    return try systemCall("fork/execve \(path)") {
      argv.withUnsafeBufferPointer { a in
        envp.withUnsafeBufferPointer { v in
          fds.withUnsafeBufferPointer { f in
            scratch.withUnsafeMutableBufferPointer { s in
              ckho_spawn_listen(
                path, a.baseAddress, v.baseAddress, listenPID, f.baseAddress, Int32(f.count),
                s.baseAddress)
            }
          }
        }
      }
    }.get()
  }

  /// The process environment, `environ`.
  static func environment() -> [String] {
    ProcessOperations.environment()
  }

  /// `SIGTERM` and the like, for log lines.
  static func signalName(_ s: Int32) -> String {
    switch s {
    case SIGHUP: return "SIGHUP"
    case SIGINT: return "SIGINT"
    case SIGQUIT: return "SIGQUIT"
    case SIGILL: return "SIGILL"
    case SIGABRT: return "SIGABRT"
    case SIGBUS: return "SIGBUS"
    case SIGFPE: return "SIGFPE"
    case SIGKILL: return "SIGKILL"
    case SIGUSR1: return "SIGUSR1"
    case SIGSEGV: return "SIGSEGV"
    case SIGUSR2: return "SIGUSR2"
    case SIGPIPE: return "SIGPIPE"
    case SIGALRM: return "SIGALRM"
    case SIGTERM: return "SIGTERM"
    case SIGCHLD: return "SIGCHLD"
    default: return "signal \(s)"
    }
  }
}
