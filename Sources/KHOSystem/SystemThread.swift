import CKHOSystem

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A plain, named POSIX thread: the one way swift-kho starts a thread, for
/// work that must never hold a thread of Swift's cooperative pool or of an
/// event loop (serving FUSE, a handover, waiting for a signal or a child).
///
/// ```swift
/// try SystemThread.detached(name: "kho-reap") { _ = try? Process.wait(for: pid) }
/// let server = try SystemThread.joinable(name: "kho-fuse") { serve() }
/// server.join()
/// ```
public struct SystemThread: Sendable {
  /// The thread's handle.
  public let handle: pthread_t

  /// Starts `body` on a new thread that nobody joins; it ends with `body`.
  ///
  /// - Parameters:
  ///   - name: shown in `/proc/PID/task/*/comm` and by debuggers; at most 15
  ///     bytes of it are kept.
  ///   - body: what the thread runs.
  /// - Throws: `pthread_create`'s error (`EAGAIN` when the process or the
  ///   system is out of threads); `body` then never runs.
  ///
  /// The corresponding C functions are `pthread_create`, `pthread_detach`
  /// and `pthread_setname_np`.
  public static func detached(name: String, _ body: @escaping @Sendable () -> Void)
    throws(SystemCallError)
  {
    let thread = try start(name: name, body)
    pthread_detach(thread.handle)
  }

  /// Starts `body` on a new thread that the caller must ``join()`` or
  /// ``detach()``.
  ///
  /// The corresponding C functions are `pthread_create` and
  /// `pthread_setname_np`.
  public static func joinable(name: String, _ body: @escaping @Sendable () -> Void)
    throws(SystemCallError) -> SystemThread
  {
    try start(name: name, body)
  }

  /// Waits for the thread to end.
  ///
  /// The corresponding C function is `pthread_join`.
  public func join() { pthread_join(handle, nil) }

  /// Lets the thread end on its own.
  ///
  /// The corresponding C function is `pthread_detach`.
  public func detach() { pthread_detach(handle) }

  private static func start(name: String, _ body: @escaping @Sendable () -> Void)
    throws(SystemCallError) -> SystemThread
  {
    let start = Unmanaged.passRetained(
      Start(
        name: String(name.utf8.prefix(15)) ?? "kho", body: body,
        faults: SystemCallFaults.inheritable()))
    var thread = pthread_t()
    let created = errnoReturningCall(
      "pthread_create",
      {
        pthread_create(
          &thread, nil,
          { raw in
            let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
            SystemCallFaults.adopt(start.faults)
            _ = ckho_pthread_setname_self(start.name)
            start.body()
            return nil
          }, start.toOpaque())
      })
    guard case .success = created else {
      start.release()
      throw created.failure!
    }
    return SystemThread(handle: thread)
  }

  private final class Start: @unchecked Sendable {
    // Immutable after init; handed from the creating thread to the new one.
    let name: String
    let body: @Sendable () -> Void
    let faults: [SystemCallFaults.Plan]
    init(name: String, body: @escaping @Sendable () -> Void, faults: [SystemCallFaults.Plan]) {
      self.name = name
      self.body = body
      self.faults = faults
    }
  }
}

extension Result {
  /// The failure, if this is one.
  var failure: Failure? {
    if case .failure(let error) = self { return error }
    return nil
  }
}
