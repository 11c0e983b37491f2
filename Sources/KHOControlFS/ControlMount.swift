import CFUSEKernel
import KHOSystem
import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A control mount: a FUSE file system that the service serves itself on a
/// dedicated thread, speaking the kernel protocol on /dev/fuse directly so
/// that the next image of the service can go on answering on the same
/// connection after exec.
///
/// ```swift
/// let mount = try ControlMount.mount(at: "/run/my-service/kho", tree: tree)
/// defer { try? mount.unmount() }
/// // ... `cat /run/my-service/kho/kernel/kho/active` prints "0"
/// ```
///
/// Requests are served one at a time, which serialises concurrent writers as
/// the kernel's mutex behind sysfs attributes does.
public final class ControlMount: Sendable {
  /// How to mount.
  public struct Options: Sendable {
    /// How to mount: mount(2) needs root; `fusermount3` works for anyone.
    public enum Method: Sendable {
      /// mount(2) as root, `fusermount3` otherwise.
      case automatic
      /// mount(2); requires root (CAP_SYS_ADMIN).
      case direct
      /// The setuid `fusermount3`, as libfuse does for ordinary users.
      case fusermount
    }

    /// Let other users in (`allow_other`; for non-root users it needs
    /// `user_allow_other` in /etc/fuse.conf). Mode bits still apply. Without
    /// it the kernel refuses every other user, root included.
    public var allowOther: Bool
    /// How to mount.
    public var method: Method
    /// The name `mount` and /proc/mounts show (`fsname`, and the subtype:
    /// the type reads `fuse.NAME`).
    public var name: String
    /// The `fusermount3` executable; `nil` looks in /usr/bin and /bin.
    public var fusermountPath: String?

    /// Options; the defaults mount as root or through `fusermount3` as
    /// appropriate, for the owner only.
    public init(
      allowOther: Bool = false, method: Method = .automatic, name: String = "kho",
      fusermountPath: String? = nil
    ) {
      self.allowOther = allowOther
      self.method = method
      self.name = name
      self.fusermountPath = fusermountPath
    }
  }

  /// What the mount's thread and its callers share.
  private struct Shared {
    var negotiated: ControlConnectionState
    var thread: SystemThread?
    var wake: (read: FileDescriptor, write: FileDescriptor)?
    /// Why serving ended, if a system call ended it.
    var servingError: SystemCallError?
    var stopRequested = false
    /// The write being handled now, and whether its reply was handed over.
    var inFlightWrite: ControlConnectionState.PendingWrite?
    var forwarded = false
    var closed = false
  }

  /// The /dev/fuse connection. It stays open across ``stop()``; hand it to
  /// the next image (without close-on-exec) together with
  /// ``prepareHandover(forwardingCurrentWrite:)``'s state.
  public let fileDescriptor: Int32
  /// The absolute mount point.
  public let mountPoint: String
  private let tree: ControlTree
  private let fusermount: String?
  private let shared: Mutex<Shared>

  private init(
    fd: Int32, tree: ControlTree, negotiated: ControlConnectionState, fusermount: String?
  ) {
    fileDescriptor = fd
    mountPoint = negotiated.mountPoint
    self.tree = tree
    self.fusermount = fusermount
    var clean = negotiated
    clean.pendingWrite = nil
    shared = Mutex(Shared(negotiated: clean))
  }

  deinit {
    // The thread retains the mount while it runs: by now it has ended.
    shared.withLock { shared in
      shared.thread?.detach()
      if let wake = shared.wake {
        wake.read.closeIgnoringErrors()
        wake.write.closeIgnoringErrors()
      }
    }
  }

  // MARK: Starting

  /// Mounts `tree` at `path` and serves it until ``stop()`` or
  /// ``unmount()``.
  ///
  /// A stale mount at `path`, left by a killed service (`stat` gives
  /// ENOTCONN), is unmounted first; a missing `path` is created (mode 0755).
  /// The mount is `nosuid,nodev,default_permissions` (the kernel enforces
  /// the files' modes), owned by the process's effective user and group.
  /// Returns once FUSE_INIT is answered.
  ///
  /// ```swift
  /// let mount = try ControlMount.mount(at: "/run/cache/kho", tree: tree)
  /// ```
  ///
  /// - Parameters:
  ///   - path: the mount point; a relative path is resolved now.
  ///   - tree: the files to serve.
  ///   - options: how to mount (``Options``).
  /// - Returns: the serving mount.
  /// - Throws: ``ControlMountError``.
  ///
  /// The corresponding C functions are `mount` (root) and libfuse's
  /// `fuse_session_mount` (`fusermount3`).
  public static func mount(at path: String, tree: ControlTree, options: Options = Options())
    throws(ControlMountError) -> ControlMount
  {
    let path = try Mounting.absolute(path)
    let fusermount = Mounting.findFusermount(options.fusermountPath)
    let viaFusermount =
      options.method == .fusermount || (options.method == .automatic && geteuid() != 0)
    if viaFusermount && fusermount == nil { throw .fusermountNotFound }
    try Mounting.prepareMountPoint(path, fusermount: fusermount)
    let fd =
      viaFusermount
      ? try Mounting.mountWithFusermount(
        at: path, name: options.name, allowOther: options.allowOther, fusermount: fusermount!)
      : try Mounting.mountDirect(at: path, name: options.name, allowOther: options.allowOther)
    do {
      let negotiated = try Handshake.initialize(fd: fd, mountPoint: path)
      let mount = ControlMount(fd: fd, tree: tree, negotiated: negotiated, fusermount: fusermount)
      try mount.startServing()
      return mount
    } catch {
      try? Mounting.unmount(path, lazy: true, fusermount: fusermount)
      FileDescriptor(rawValue: fd).closeIgnoringErrors()
      throw error
    }
  }

  /// Serves `tree` on a connection inherited from the previous image of the
  /// service, which answered FUSE_INIT: no INIT is expected. If the state
  /// carries a pending write (the previous image's `execute`), it is
  /// answered as successful once serving has started.
  ///
  /// ```swift
  /// let state = try ControlConnectionState(encoded: getenv(ControlConnectionState.environmentVariable))
  /// let mount = try ControlMount.adopt(fd: inheritedFD, negotiated: state, tree: tree)
  /// ```
  ///
  /// - Parameters:
  ///   - fd: the inherited /dev/fuse fd; the mount owns it from now on and
  ///     sets close-on-exec on it.
  ///   - negotiated: the state the previous image exported.
  ///   - tree: the files to serve, with the same paths as the previous
  ///     image's (node ids derive from paths).
  /// - Returns: the serving mount.
  /// - Throws: ``ControlMountError/system(_:)`` (EBADF for an fd
  ///   that is not open).
  public static func adopt(fd: Int32, negotiated: ControlConnectionState, tree: ControlTree)
    throws(ControlMountError) -> ControlMount
  {
    // Close-on-exec again: a child that inherited the connection would keep
    // it alive after this service dies, leaving callers hanging instead of
    // getting ENOTCONN. The runtime clears it on the fds it hands over.
    try checked { () throws(SystemCallError) in
      try FileDescriptor(rawValue: fd).setCloseOnExec(true)
    }
    let fusermount = Mounting.findFusermount(nil)
    let mount = ControlMount(fd: fd, tree: tree, negotiated: negotiated, fusermount: fusermount)
    try mount.startServing()
    if let pending = negotiated.pendingWrite {
      var out = fuse_write_out()
      out.size = pending.size
      // ENOENT: the writer was interrupted meanwhile; nothing is owed.
      try? writeMessage(fd, replyMessage(unique: pending.unique, payload: bytes(of: out)))
    }
    return mount
  }

  // MARK: State for the next image

  /// What FUSE_INIT agreed on, with the mount point: enough for
  /// ``adopt(fd:negotiated:tree:)``.
  public var negotiated: ControlConnectionState {
    shared.withLock { $0.negotiated }
  }

  /// The mount whose handler is running on the calling thread, if any: how
  /// the `execute` handler reaches its mount.
  public static var current: ControlMount? {
    guard let raw = pthread_getspecific(servingMountKey) else { return nil }
    return Unmanaged<ControlMount>.fromOpaque(raw).takeUnretainedValue()
  }

  /// The state to give the next image.
  ///
  /// Called from a write handler with `forwardingCurrentWrite`, the write
  /// being handled becomes the next image's to answer: when the handler
  /// returns normally (as an in-place exec's handler does not), the mount
  /// sends no reply and stops serving; the next image's
  /// ``adopt(fd:negotiated:tree:)`` replies, so the writer's `write(2)`
  /// returns once the next image serves. If the handler throws instead (the
  /// exec failed), its error is the reply and serving goes on.
  ///
  /// For an overlapped handover, leave `forwardingCurrentWrite` false, call
  /// ``stop()`` from the handler once the next image is ready, and return:
  /// the reply goes out, then this mount stops reading.
  ///
  /// - Parameter forwardingCurrentWrite: hand the current write's reply to
  ///   the next image (ignored outside a write handler).
  /// - Returns: the state, with the pending write if forwarded.
  public func prepareHandover(forwardingCurrentWrite: Bool = false) -> ControlConnectionState {
    let onThread = isServingThread
    return shared.withLock { shared in
      var state = shared.negotiated
      if forwardingCurrentWrite && onThread, let write = shared.inFlightWrite {
        shared.forwarded = true
        state.pendingWrite = write
      }
      return state
    }
  }

  // MARK: Stopping

  /// Stops reading requests, without unmounting: the connection stays open
  /// and requests that arrive meanwhile wait in the kernel's queue (they do
  /// not fail) until the next image adopts the fd.
  ///
  /// From another thread, returns once the serving thread has finished the
  /// request in hand (its reply sent) and exited. From a handler, returns
  /// at once; serving stops after that handler's reply.
  public func stop() {
    let onThread = isServingThread
    let (thread, wake) = shared.withLock { shared in
      shared.stopRequested = true
      if onThread { return (SystemThread?.none, shared.wake) }
      defer { shared.thread = nil }
      return (shared.thread, shared.wake)
    }
    guard !onThread, let thread, let wake else { return }
    try? wake.write.writeAll([1])
    thread.join()
  }

  /// Stops serving and unmounts: the clean shutdown of a service.
  ///
  /// A mount still in use (a caller has a file open) is detached lazily.
  /// Must not be called from a handler.
  ///
  /// - Throws: ``ControlMountError`` if unmounting fails; the fd is closed
  ///   anyway.
  ///
  /// The corresponding C function is `umount2` (root) or `fusermount3 -u`.
  public func unmount() throws(ControlMountError) {
    precondition(!isServingThread, "ControlMount.unmount() from its own handler")
    stop()
    guard takeDescriptor() else { return }
    defer { FileDescriptor(rawValue: fileDescriptor).closeIgnoringErrors() }
    try Mounting.unmount(mountPoint, lazy: false, fusermount: fusermount)
  }

  /// Stops serving and closes the connection without unmounting, as a
  /// killed service does: the mount stays, stale (`stat` gives ENOTCONN),
  /// until the next ``mount(at:tree:options:)`` at the same path recovers
  /// it. For tests and for giving up a connection that another process now
  /// serves.
  public func abandon() {
    precondition(!isServingThread, "ControlMount.abandon() from its own handler")
    stop()
    if takeDescriptor() { FileDescriptor(rawValue: fileDescriptor).closeIgnoringErrors() }
  }

  /// Stops serving and gives up the connection without closing it or
  /// unmounting: whoever adopts the returned fd serves it from now on, and
  /// ``unmount()`` and ``abandon()`` of this mount no longer touch it. For a
  /// next image living in the same process (tests), or an old image that
  /// keeps running after handing over.
  ///
  /// - Returns: the /dev/fuse fd.
  public func detach() -> Int32 {
    precondition(!isServingThread, "ControlMount.detach() from its own handler")
    stop()
    _ = takeDescriptor()
    return fileDescriptor
  }

  /// Marks the fd closed; `false` if it already was.
  private func takeDescriptor() -> Bool {
    shared.withLock { shared in
      defer { shared.closed = true }
      return !shared.closed
    }
  }

  private var isServingThread: Bool {
    pthread_getspecific(servingMountKey) == Unmanaged.passUnretained(self).toOpaque()
  }

  // MARK: Serving

  /// Starts the serving thread.
  private func startServing() throws(ControlMountError) {
    let pipe = try checked { () throws(SystemCallError) in try FileDescriptor.pipe() }
    shared.withLock { $0.wake = (pipe.read, pipe.write) }
    let wake = pipe.read.rawValue
    let thread = try checked { () throws(SystemCallError) in
      try SystemThread.joinable(name: "kho-fuse") { [self] in serve(wake: wake) }
    }
    shared.withLock { $0.thread = thread }
  }

  /// Why serving ended, when a failed system call ended it (a `read` of
  /// /dev/fuse failing with `EIO`, say); nil while serving, and after a
  /// clean stop or unmount.
  public var servingError: SystemCallError? {
    shared.withLock { $0.servingError }
  }

  /// The serving loop: one request at a time until stopped or unmounted.
  private func serve(wake: Int32) {
    pthread_setspecific(servingMountKey, Unmanaged.passUnretained(self).toOpaque())
    defer { pthread_setspecific(servingMountKey, nil) }
    let session = Session(tree: tree)
    let maxWrite = shared.withLock { $0.negotiated.maxWrite }
    var buffer = [UInt8](repeating: 0, count: Int(maxWrite) + Int(FUSE_MIN_READ_BUFFER))
    while let request = nextRequest(into: &buffer, wake: wake) {
      if !answer(request, session: session) { break }
    }
  }

  /// Waits for the next request, or `nil` when stopped or when the
  /// connection is gone (ENODEV after unmount).
  private func nextRequest(into buffer: inout [UInt8], wake: Int32) -> Request? {
    while !shared.withLock({ $0.stopRequested }) {
      // poll first, so that stop() can wake us without a request being
      // taken from the kernel's queue and left unanswered.
      var fds = [
        pollfd(fd: fileDescriptor, events: Int16(POLLIN), revents: 0),
        pollfd(fd: wake, events: Int16(POLLIN), revents: 0),
      ]
      do throws(SystemCallError) {
        guard try Poll.wait(&fds, timeoutMilliseconds: -1) > 0 else { continue }
      } catch {
        return endServing(error)
      }
      if fds[1].revents != 0 { return nil }
      if fds[0].revents == 0 { continue }
      let descriptor = FileDescriptor(rawValue: fileDescriptor)
      let result: Result<Int, SystemCallError> = buffer.withUnsafeMutableBytes { raw in
        Result { () throws(SystemCallError) in try descriptor.read(into: raw) }
      }
      switch result {
      case .success(let count):
        if let request = buffer.withUnsafeBytes({
          Request(UnsafeRawBufferPointer(rebasing: $0[..<count]))
        }) {
          return request
        }
      // ENOENT: the request was interrupted before we got it; EAGAIN: taken
      // by another reader.
      case .failure(let error) where error.errno == .noSuchFile || error.errno == .tryAgain:
        continue
      // ENODEV: unmounted; the connection is over.
      case .failure(let error) where error.errno == .noSuchDevice: return nil
      case .failure(let error): return endServing(error)
      }
    }
    return nil
  }

  /// Records why serving ends.
  private func endServing(_ error: SystemCallError) -> Request? {
    shared.withLock { $0.servingError = error }
    return nil
  }

  /// Handles one request and sends its reply; `false` when serving must end.
  private func answer(_ request: Request, session: Session) -> Bool {
    let isWrite = request.header.opcode == FUSE_WRITE.rawValue
    if isWrite, let arguments = request.argument(fuse_write_in.self) {
      shared.withLock {
        $0.inFlightWrite = .init(unique: request.header.unique, size: arguments.size)
        $0.forwarded = false
      }
    }
    let outcome = session.handle(request)
    let forwarded = shared.withLock { shared in
      defer { (shared.inFlightWrite, shared.forwarded) = (nil, false) }
      return shared.forwarded
    }
    // A forwarded write is the next image's to answer.
    if case .reply = outcome, forwarded { return false }
    if let message = outcome.message(unique: request.header.unique) {
      try? writeMessage(fileDescriptor, message)
    }
    if case .destroy = outcome { return false }
    return !shared.withLock { $0.stopRequested }
  }
}
