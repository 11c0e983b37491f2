import KHOSystem

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
      let ready = try FileDescriptor.pipe()
      do {
        // A socket, not a pipe: GO to a next image that died after READY
        // must fail with EPIPE (and roll back), not raise SIGPIPE here.
        let commit = try FileDescriptor.socketPair()
        return Pipes(
          readyRead: ready.read.rawValue, readyWrite: ready.write.rawValue,
          commitRead: commit.0.rawValue, commitWrite: commit.1.rawValue)
      } catch {
        ready.read.closeIgnoringErrors()
        ready.write.closeIgnoringErrors()
        throw error
      }
    }

    /// Closes the child's ends in the parent, once the child has them.
    mutating func closeChildEnds() {
      FileDescriptor(rawValue: readyWrite).closeIgnoringErrors()
      FileDescriptor(rawValue: commitRead).closeIgnoringErrors()
      readyWrite = -1
      commitRead = -1
    }

    mutating func closeAll() {
      for fd in [readyRead, readyWrite, commitRead, commitWrite] where fd >= 0 {
        FileDescriptor(rawValue: fd).closeIgnoringErrors()
      }
      self = Pipes(readyRead: -1, readyWrite: -1, commitRead: -1, commitWrite: -1)
    }

    /// The corresponding C function is `socketpair`.
  }

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
    (try? FileDescriptor(rawValue: fd).sendMessage(goMessage)) == goMessage.count
  }

  static func awaitReady(_ fd: Int32, timeoutMilliseconds: Int) -> Outcome {
    var received: [UInt8] = []
    let deadline = SDNotifier.monotonicMicroseconds() + UInt64(max(0, timeoutMilliseconds)) * 1000
    let descriptor = FileDescriptor(rawValue: fd)
    while true {
      let now = SDNotifier.monotonicMicroseconds()
      if now >= deadline { return .timedOut }
      let left = Int32(min(UInt64(Int32.max), (deadline - now + 999) / 1000))
      let chunk: [UInt8]
      do throws(SystemCallError) {
        guard try descriptor.waitReadable(timeoutMilliseconds: left) else { continue }
        chunk = try descriptor.read(upTo: 64)
      } catch {
        if error.errno == .tryAgain { continue }
        return .exited("\(error)")
      }
      if chunk.isEmpty { return .exited("it closed the ready pipe before reporting ready") }
      received += chunk
      if received.starts(with: readyMessage) { return .ready }
      if received.count >= readyMessage.count || !readyMessage.starts(with: received) {
        return .exited("it wrote \"\(String(decoding: received, as: UTF8.self))\" instead of READY")
      }
    }
  }

  /// Reports ready, then waits for the commit: `GO`, after the
  /// descriptors the previous image hands over (a ``DescriptorParcel``,
  /// if it sends one). Returns whether it committed, and the parcel.
  static func reportReadyAndAwaitCommit(readyFD: Int32, commitFD: Int32) -> (
    committed: Bool, parcel: DescriptorParcel?
  ) {
    let ready = FileDescriptor(rawValue: readyFD)
    let commit = FileDescriptor(rawValue: commitFD)
    try? ready.writeAll(readyMessage)
    ready.closeIgnoringErrors()
    defer { commit.closeIgnoringErrors() }
    var receiver = DescriptorBatch.Receiver()
    var sawParcel = false
    while true {
      // Only GO commits. EOF without it means the old image died between
      // our READY and its commit, with its state possibly frozen or not:
      // taking over now could race a keeper that restarts the service from
      // the same arena (systemd or `kho run` see their main process die),
      // so this image stands down and the restart recovers the state.
      guard let received = try? receiver.receive(from: commit) else { break }
      switch received {
      case .parcelMessage: sawParcel = true
      case .end: continue
      case .closed: break
      case .other(let bytes):
        guard bytes.starts(with: goMessage) else { break }
        return (true, sawParcel ? receiver.finish() : nil)
      }
      if case .closed = received { break }
      if case .other = received { break }
    }
    receiver.malformed = true
    _ = receiver.finish()
    return (false, nil)
  }

  /// Reads the child's ends from the environment, if this image was
  /// started by an overlapped handover.
  static func inheritedEnds() -> (ready: Int32, commit: Int32)? {
    guard let r = Environment.value(of: readyEnvironmentName).flatMap({ Int32($0) }),
      let c = Environment.value(of: commitEnvironmentName).flatMap({ Int32($0) }),
      FileDescriptor(rawValue: r).isOpen, FileDescriptor(rawValue: c).isOpen
    else { return nil }
    return (r, c)
  }
}
