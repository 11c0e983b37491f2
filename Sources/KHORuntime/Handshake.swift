import CKHORuntime

#if canImport(Glibc)
  import Glibc
#endif

/// The two pipes of an overlapped handover.
///
/// The old image spawns the next with the write end of a *ready* pipe and
/// the read end of a *commit* pipe, and goes on serving. The next image
/// boots, validates what it was handed, prepares all it can without
/// touching handed-over state, and writes `READY\n` (it is *prepared*);
/// then it waits until the old image writes `GO\n` (or exits, closing the
/// pipe). The old image, having seen `READY`, sends FREEZE to its
/// subsystems, commits and exits. If the next image
/// dies, closes the pipe or stays silent past the timeout, the old image
/// kills and reaps it and rolls back: nothing was changed, so nothing is
/// lost.
enum Handshake {
  static let readyEnvironmentName = "KHO_READY_FD"
  static let commitEnvironmentName = "KHO_COMMIT_FD"
  static let readyMessage = Array("READY\n".utf8)
  static let goMessage = Array("GO\n".utf8)

  /// The old image's ends, and the ends for the child.
  struct Pipes {
    var readyRead: Int32
    var readyWrite: Int32
    var commitRead: Int32
    var commitWrite: Int32

    static func make() throws(SystemCallError) -> Pipes {
      let ready = try pipe()
      do {
        // A socket, not a pipe: GO to a next image that died after READY
        // must fail with EPIPE (and roll back), not raise SIGPIPE here.
        let commit = try socketPair()
        return Pipes(
          readyRead: ready.0, readyWrite: ready.1, commitRead: commit.0, commitWrite: commit.1)
      } catch {
        close(ready.0)
        close(ready.1)
        throw error
      }
    }

    /// Closes the child's ends in the parent, once the child has them.
    mutating func closeChildEnds() {
      close(readyWrite)
      close(commitRead)
      readyWrite = -1
      commitRead = -1
    }

    mutating func closeAll() {
      for fd in [readyRead, readyWrite, commitRead, commitWrite] where fd >= 0 { close(fd) }
      self = Pipes(readyRead: -1, readyWrite: -1, commitRead: -1, commitWrite: -1)
    }

    /// The corresponding C function is `socketpair`.
    private static func socketPair() throws(SystemCallError) -> (Int32, Int32) {
      var fds: [Int32] = [-1, -1]
      _ = try retryingOnInterrupt("socketpair") { ckho_socketpair_cloexec(&fds) }
      return (fds[0], fds[1])
    }

    /// The corresponding C function is `pipe2`.
    private static func pipe() throws(SystemCallError) -> (Int32, Int32) {
      var fds: [Int32] = [-1, -1]
      _ = try retryingOnInterrupt("pipe2") { ckho_pipe_cloexec(&fds) }
      return (fds[0], fds[1])
    }
  }

  /// How waiting for the next image ended.
  enum Outcome: Equatable {
    case ready
    case exited(String)
    case timedOut
  }

  /// Sends `GO\n`: the commit. False when the next image is gone (EPIPE):
  /// it died after reporting ready, and nothing was handed over.
  ///
  /// The corresponding C function is `send` (with MSG_NOSIGNAL).
  static func commit(_ fd: Int32) -> Bool {
    var err: Int32 = 0
    while true {
      let sent = goMessage.withUnsafeBytes {
        ckho_send_nosignal(fd, $0.baseAddress, $0.count, &err)
      }
      if sent == goMessage.count { return true }
      if sent < 0 && err == EINTR { continue }
      return false
    }
  }

  /// Waits up to `timeoutMilliseconds` for `READY\n` on `fd`.
  static func awaitReady(_ fd: Int32, timeoutMilliseconds: Int) -> Outcome {
    var received: [UInt8] = []
    let deadline = SDNotifier.monotonicMicroseconds() + UInt64(max(0, timeoutMilliseconds)) * 1000
    while true {
      let now = SDNotifier.monotonicMicroseconds()
      if now >= deadline { return .timedOut }
      var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
      let left = Int32(min(UInt64(Int32.max), (deadline - now + 999) / 1000))
      let n = poll(&p, 1, left)
      if n < 0 {
        if errno == EINTR { continue }
        return .exited("poll: errno \(errno)")
      }
      if n == 0 { continue }
      var buffer = [UInt8](repeating: 0, count: 64)
      let got = read(fd, &buffer, buffer.count)
      if got < 0 {
        if errno == EINTR || errno == EAGAIN { continue }
        return .exited("read: errno \(errno)")
      }
      if got == 0 { return .exited("it closed the ready pipe before reporting ready") }
      received += buffer[..<got]
      if received.starts(with: readyMessage) { return .ready }
      if received.count >= readyMessage.count || !readyMessage.starts(with: received) {
        return .exited("it wrote \"\(String(decoding: received, as: UTF8.self))\" instead of READY")
      }
    }
  }

  /// In the next image: reports ready and waits for the old image to
  /// commit. Returns `false` if the old image aborted the handover (it then
  /// kills this process anyway) or died before committing.
  static func reportReadyAndAwaitCommit(readyFD: Int32, commitFD: Int32) -> Bool {
    _ = readyMessage.withUnsafeBytes { write(readyFD, $0.baseAddress, $0.count) }
    close(readyFD)
    var buffer = [UInt8](repeating: 0, count: 16)
    while true {
      let got = read(commitFD, &buffer, buffer.count)
      if got < 0 && errno == EINTR { continue }
      close(commitFD)
      // Only GO commits. EOF without it means the old image died between
      // our READY and its commit, with its state possibly frozen or not:
      // taking over now could race a keeper that restarts the service from
      // the same arena (systemd or `kho run` see their main process die),
      // so this image stands down and the restart recovers the state.
      return got > 0 && buffer[..<got].starts(with: goMessage)
    }
  }

  /// Reads the child's ends from the environment, if this image was
  /// started by an overlapped handover.
  static func inheritedEnds() -> (ready: Int32, commit: Int32)? {
    guard let r = Environment.value(of: readyEnvironmentName).flatMap({ Int32($0) }),
      let c = Environment.value(of: commitEnvironmentName).flatMap({ Int32($0) }),
      fcntl(r, F_GETFD) != -1, fcntl(c, F_GETFD) != -1
    else { return nil }
    return (r, c)
  }
}
