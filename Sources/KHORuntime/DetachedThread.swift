import CKHORuntime

#if canImport(Glibc)
  import Glibc
#endif

/// A named, detached thread: the one way the runtime and its services start
/// a plain thread (for work that must not run on an event loop, such as a
/// handover or a signal wait).
public enum DetachedThread {
  /// Starts `body` on a new detached thread called `name` (at most 15
  /// bytes are shown, in `/proc/PID/task/*/comm`).
  ///
  /// The corresponding C functions are `pthread_create`, `pthread_detach`
  /// and `pthread_setname_np` (through `ckho_set_thread_name`).
  ///
  /// - Throws: `SystemCallError` with `pthread_create`'s error (EAGAIN when
  ///   the process or the system is out of threads); `body` then never runs.
  public static func start(name: String, _ body: @escaping @Sendable () -> Void)
    throws(SystemCallError)
  {
    let box = Unmanaged.passRetained(Box(name: String(name.utf8.prefix(15))!, body: body))
    var thread = pthread_t()
    let rc = pthread_create(
      &thread, nil,
      { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        _ = ckho_set_thread_name(box.name)
        box.body()
        return nil
      }, box.toOpaque())
    guard rc == 0 else {
      box.release()
      throw SystemCallError("pthread_create(\(name))", errno: rc)
    }
    pthread_detach(thread)
  }

  private final class Box: Sendable {
    let name: String
    let body: @Sendable () -> Void
    init(name: String, body: @escaping @Sendable () -> Void) {
      self.name = name
      self.body = body
    }
  }
}
