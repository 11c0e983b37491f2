// The control mount of a service: the FUSE file system of KHOControlFS,
// with KHO's attribute model behind /sys/kernel/kho and /sys/firmware/kho
// and the runtime's handover behind the kexec files. It only forwards.

import KHO
import KHOControlFS
import KHORuntime
import Logging
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// A service's control mount, the user-space `/sys/kernel/kho`.
///
/// ```swift
/// let runtime = try HandoverRuntime.boot(options)
/// // ... claim state, runtime.ready() ...
/// let control = try ServiceControl.start(
///   runtime: runtime, mountPoint: "/run/my-service/kho",
///   hooks: .init(stopServing: { listener.pause() }, resumeServing: { listener.resume() }, committed: { exit(0) }))
/// // operators: echo 1 > /run/my-service/kho/kernel/kho/active; kho exec /run/my-service/kho -- /usr/bin/my-service
/// ```
public final class ServiceControl: Sendable {
  /// What the service does around a handover started from the mount.
  public struct Hooks: Sendable {
    /// Before a handover: stop accepting on handed-over listeners.
    public var stopServing: @Sendable () -> Void
    /// After a failed handover: accept again; nothing was lost.
    public var resumeServing: @Sendable () -> Void
    /// After an overlapped handover: the next image serves and the reply to
    /// the `execute` write went out; the service must exit now.
    public var committed: @Sendable () -> Void

    /// Hooks for the service around a handover.
    public init(
      stopServing: @escaping @Sendable () -> Void, resumeServing: @escaping @Sendable () -> Void,
      committed: @escaping @Sendable () -> Void
    ) {
      self.stopServing = stopServing
      self.resumeServing = resumeServing
      self.committed = committed
    }
  }

  /// The name of the FUSE connection among the handed-over fds.
  public static let fdName = "kho-control"

  /// The extra files beyond ABI.md's, for `kho status`.
  public enum ExtraPaths {
    /// `0444`: `"%llu\n"`, 0 after a cold start, n after n handovers.
    public static let generation = "kernel/kho/generation"
    /// `0444`: `"0x%llx\n"`, the bytes of the current blob's mem ranges
    /// while active, else 0.
    public static let preservedBytes = "kernel/kho/preserved_bytes"
    /// `0444`: how this image started, `"cold\n"`, `"handover\n"` or
    /// `"crash\n"` (the previous image died; a keeper held the arena).
    public static let boot = "kernel/kho/boot"
    /// `0400`: the stateless description as it is in the arena now, the
    /// kho-v4 root (`kho dt decode` reads it); absent without a root.
    public static let preservationDT = "kernel/kho/preservation/dt"
    /// `0444`: the ranges preserved statelessly, one `0xSTART 0xEND` line
    /// each (arena offsets).
    public static let preservationRanges = "kernel/kho/preservation/ranges"
  }

  /// The mount being served (replaced if serving restarts after a failed
  /// handover started off the mount).
  public var mount: ControlMount { current.withLock { $0 } }
  private let current: Mutex<ControlMount>
  private let tree: ControlTree
  private let runtime: HandoverRuntime
  private let hooks: Hooks
  private let logger: Logger
  private struct Staged {
    var image: KexecImage?
    /// The bytes written to `image` since the last write at offset 0.
    var text: [UInt8] = []
    var mode: KexecMode = .inPlace
  }
  private let staged = Mutex(Staged())

  private init(
    mount: ControlMount, tree: ControlTree, runtime: HandoverRuntime, hooks: Hooks, logger: Logger
  ) {
    self.current = Mutex(mount)
    self.tree = tree
    self.runtime = runtime
    self.hooks = hooks
    self.logger = logger
  }

  /// Serves the control mount: the previous image's connection if one was
  /// handed over (answering a pending `execute` write, so that it returns
  /// now that this image serves), else a new mount at `mountPoint` (a stale
  /// mount left there by a killed service is cleared first).
  ///
  /// Call it after `HandoverRuntime/ready(status:)`.
  public static func start(
    runtime: HandoverRuntime, mountPoint: String, hooks: Hooks,
    options: ControlMount.Options = .init(), logger: Logger = Logger(label: "kho.control")
  ) throws(ControlMountError) -> ServiceControl {
    let box = ControlBox()
    let tree = makeTree(box, attributes: runtime.kho.attributes)
    let mount: ControlMount
    if let adopted = adoptInherited(runtime, tree: tree, logger: logger) {
      mount = adopted
    } else {
      mount = try ControlMount.mount(at: mountPoint, tree: tree, options: options)
      logger.info("kho: control mount at \(mountPoint)")
    }
    let control = ServiceControl(
      mount: mount, tree: tree, runtime: runtime, hooks: hooks, logger: logger)
    box.control.withLock { $0 = control }
    do { try runtime.register(mount.fileDescriptor, name: fdName, keepAcrossCrash: false) } catch {
      logger.error("kho: the control mount will not survive a handover: \(error)")
    }
    return control
  }

  /// The control connection the previous image handed over, served from
  /// now on; nil when there is none or it cannot be adopted. What cannot be
  /// adopted (no or a malformed `KHO_CONTROL_FUSE`, a connection that fails
  /// to start, a FUSE fd handed over without a usable name) is closed, so
  /// that the old mount turns stale (ENOTCONN) instead of hanging its
  /// callers, and ``ControlMount/mount(at:tree:options:)`` then replaces it.
  private static func adoptInherited(
    _ runtime: HandoverRuntime, tree: ControlTree, logger: Logger
  ) -> ControlMount? {
    let encoded = Environment.take(ControlConnectionState.environmentVariable)
    for fd in runtime.strayInherited where isFUSEConnection(fd) {
      logger.error("kho: closing FUSE connection fd \(fd), handed over without a name")
      FileDescriptor(rawValue: fd).closeIgnoringErrors()
    }
    guard let fd = runtime.inherited[fdName] else { return nil }
    do {
      guard let encoded else {
        throw ControlMountError.malformedState(
          "\(ControlConnectionState.environmentVariable) is not set")
      }
      guard isFUSEConnection(fd) else {
        // Not ours to close: whatever it is, it is not the connection.
        logger.error(
          "kho: the fd \(fd) named \(fdName) is not a /dev/fuse connection; mounting anew")
        return nil
      }
      let mount = try ControlMount.adopt(
        fd: fd, negotiated: try ControlConnectionState(encoded: encoded), tree: tree)
      logger.info(
        "kho: serving the control mount at \(mount.mountPoint) handed over by the previous image")
      return mount
    } catch {
      logger.error("kho: cannot adopt the handed-over control connection, mounting anew: \(error)")
      FileDescriptor(rawValue: fd).closeIgnoringErrors()
      return nil
    }
  }

  /// Whether `fd` is a connection to `/dev/fuse`.
  private static func isFUSEConnection(_ fd: Int32) -> Bool {
    (try? FileDescriptor(rawValue: fd).procLinkTarget()) == "/dev/fuse"
  }

  /// Unmounts, for a clean shutdown.
  public func unmount() {
    runtime.unregister(Self.fdName)
    do { try mount.unmount() } catch {
      logger.error("kho: unmounting \(mount.mountPoint): \(error)")
    }
  }

  // MARK: The files

  /// The tree refers to the control through a box: the mount needs the tree
  /// before the control exists.
  private final class ControlBox: Sendable {
    let control = Mutex<ServiceControl?>(nil)
    func with<R>(_ body: (ServiceControl) throws(Errno) -> R) throws(Errno) -> R {
      guard let c = control.withLock({ $0 }) else { throw Errno(rawValue: EAGAIN) }
      return try body(c)
    }
  }

  private static func makeTree(_ box: ControlBox, attributes: KHOAttributes) -> ControlTree {
    var files: [String: ControlFile] = [:]
    for attribute in attributes.table {
      files[attribute.path] = attributeFile(attribute.path, UInt32(attribute.mode), box)
    }
    files[ExtraPaths.generation] = .attribute(mode: 0o444) { () throws(Errno) in
      try box.with { c throws(Errno) in Array("\(c.runtime.kho.generation)\n".utf8) }
    }
    files[ExtraPaths.preservedBytes] = .attribute(mode: 0o444) { () throws(Errno) in
      try box.with { c throws(Errno) in KHOAttributes.hexShow(c.preservedBytes) }
    }
    files[ExtraPaths.boot] = .attribute(mode: 0o444) { () throws(Errno) in
      try box.with { c throws(Errno) in
        Array("\(c.runtime.kho.incoming?.kind.rawValue ?? "cold")\n".utf8)
      }
    }
    files[ExtraPaths.preservationDT] = .attribute(mode: 0o400) { () throws(Errno) in
      try box.with { c throws(Errno) in
        guard let tree = c.runtime.kho.preservation?.tree else { throw Errno(rawValue: ENOENT) }
        return tree.bytes
      }
    }
    files[ExtraPaths.preservationRanges] = .attribute(mode: 0o444) { () throws(Errno) in
      try box.with { c throws(Errno) in
        let ranges = c.runtime.kho.preservation?.ranges ?? []
        return Array(
          ranges.map {
            "0x\(String($0.lowerBound, radix: 16)) 0x\(String($0.upperBound, radix: 16))\n"
          }
          .joined().utf8)
      }
    }
    files[ControlPaths.kexecLoaded] = .attribute(mode: 0o444) { () throws(Errno) in
      try box.with { c throws(Errno) in
        Array((c.staged.withLock { $0.image } == nil ? "0\n" : "1\n").utf8)
      }
    }
    files[ControlPaths.kexecImage] = .offsetAttribute(
      mode: 0o600,
      show: { () throws(Errno) in
        try box.with { c throws(Errno) in c.staged.withLock { $0.image?.shown ?? [] } }
      },
      store: { (offset, bytes) throws(Errno) in
        // A write at offset 0 starts a new image; later writes of the same
        // open continue it (a shell's printf writes argument by argument).
        try box.with { c throws(Errno) in
          try c.staged.withLock { (staged) throws(Errno) in
            let text = offset == 0 ? bytes : staged.text + bytes
            guard text.count <= 4096 else { throw Errno(rawValue: E2BIG) }
            staged.image = try KexecImage(parsing: text)
            staged.text = text
          }
        }
      })
    files[ControlPaths.kexecMode] = .attribute(
      mode: 0o600,
      show: { () throws(Errno) in
        try box.with { c throws(Errno) in c.staged.withLock { $0.mode.shown } }
      },
      store: { (bytes) throws(Errno) in
        let mode = try KexecMode(parsing: bytes)
        try box.with { c throws(Errno) in c.staged.withLock { $0.mode = mode } }
      })
    files[ControlPaths.kexecUnload] = .trigger { (bytes) throws(Errno) in
      try ControlFile.parseTrigger(bytes)
      try box.with { c throws(Errno) in c.staged.withLock { $0.image = nil } }
    }
    files[ControlPaths.kexecExecute] = .trigger { (bytes) throws(Errno) in
      try ControlFile.parseTrigger(bytes)
      try box.with { c throws(Errno) in try c.execute() }
    }
    return ControlTree(files)
  }

  /// A file that forwards to KHO's attribute model.
  private static func attributeFile(_ path: String, _ mode: UInt32, _ box: ControlBox)
    -> ControlFile
  {
    let size: @Sendable () -> Int? = {
      try? box.with { (c) throws(Errno) -> Int in
        do throws(Errno) { return try c.runtime.kho.attributes.size(path) } catch {
          throw Errno(rawValue: error.rawValue)
        }
      }
    }
    let read: ControlFile.Reader = { (offset, count) throws(Errno) -> [UInt8] in
      try box.with { (c) throws(Errno) -> [UInt8] in
        do throws(Errno) {
          return try c.runtime.kho.attributes.read(path, offset: UInt64(offset), count: count)
        } catch { throw Errno(rawValue: error.rawValue) }
      }
    }
    let write: ControlFile.Writer = { (bytes) throws(Errno) in
      try box.with { (c) throws(Errno) in
        do throws(Errno) { try c.runtime.kho.attributes.write(path, bytes) } catch {
          throw Errno(rawValue: error.rawValue)
        }
      }
    }
    return ControlFile(
      mode: mode, size: { UInt64(size() ?? 0) }, isPresent: { size() != nil }, read: read,
      write: mode & 0o200 != 0 ? write : nil)
  }

  private var preservedBytes: UInt64 {
    guard let tree = runtime.kho.outgoing.dt,
      let cache = try? MemCache(
        tree: tree, pageSize: runtime.kho.arena.pageSize.bytes, arenaSize: runtime.kho.arena.size,
        scratch: runtime.kho.scratch)
    else { return 0 }
    return cache.totalBytes
  }

  // MARK: Executing the next image

  /// Hands over to `image` from a thread of the service (a signal thread,
  /// say), never from the mount's own handlers: the mount stops reading
  /// (requests wait in the kernel), its connection travels with its
  /// negotiated state, and if the handover fails the mount serves again.
  ///
  /// A process must not write to its own `execute` file for this: the
  /// writing thread would wait for a reply that only the next image can
  /// send, and exec cannot replace a process while one of its threads
  /// waits on FUSE.
  public func handOver(to image: NextImage, mode: HandoverMode) throws(HandoverFailure)
    -> HandoverRuntime.Outcome
  {
    precondition(
      ControlMount.current == nil, "ServiceControl.handOver from the mount's own handler")
    let old = mount
    let fd = old.detach()  // joins the serving thread; the fd stays open
    let state = old.negotiated
    var next = image
    next.environment = Environment.merging(
      next.environment, [ControlConnectionState.environmentVariable: state.encoded])
    hooks.stopServing()
    do {
      return try runtime.handover(to: next, mode: mode)
    } catch {
      hooks.resumeServing()
      do {
        let resumed = try ControlMount.adopt(fd: fd, negotiated: state, tree: tree)
        current.withLock { $0 = resumed }
      } catch let mountError {
        logger.error("kho: the control mount cannot serve again: \(mountError)")
      }
      throw error
    }
  }

  /// `reboot(LINUX_REBOOT_CMD_KEXEC)`: hands over to the staged image. Runs
  /// on the mount's serving thread, off the service's event loops; other
  /// requests to the mount wait meanwhile.
  private func execute() throws(Errno) {
    let (staged, mode) = self.staged.withLock { ($0.image, $0.mode) }
    guard let staged else { throw Errno(rawValue: EINVAL) }
    guard let current = ControlMount.current else { throw Errno(rawValue: EIO) }
    var image = NextImage(path: staged.executable, arguments: staged.arguments)
    let state = current.prepareHandover(forwardingCurrentWrite: mode == .inPlace)
    image.environment = Environment.merging(
      image.environment, [ControlConnectionState.environmentVariable: state.encoded])
    hooks.stopServing()
    do {
      let outcome = try runtime.handover(
        to: image, mode: mode == .inPlace ? .inPlace : .overlapped(timeout: .seconds(60)))
      guard case .committed(let pid) = outcome else { return }
      logger.info("kho: pid \(pid) serves; leaving")
      // Reply to this write first (the serving thread does once this
      // handler returns and it stops), then let the service exit.
      current.stop()
      let hooks = self.hooks
      let mount = current
      do {
        try SystemThread.detached(name: "kho-committed") {
          mount.stop()  // joins the serving thread: the reply is out
          hooks.committed()
        }
      } catch {
        // Without a thread to wait for the reply, leave without it: the
        // writer sees its connection go, and `kho exec` then waits for the
        // next image's generation, which this one already serves.
        logger.error("kho: \(error); exiting without answering the execute write")
        hooks.committed()
      }
    } catch {
      hooks.resumeServing()
      throw Errno(rawValue: Self.errno(for: error))
    }
  }

  static func errno(for failure: HandoverFailure) -> Int32 {
    switch failure {
    case .serialize: return EINVAL
    case .freeze(let e): return e.errno.rawValue
    case .load(let e): return e.errno.rawValue
    case .launch(let e): return e.errno.rawValue
    case .successorFailed: return ECHILD
    case .timedOut: return ETIMEDOUT
    case .busy: return EBUSY
    }
  }
}
