#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The body of a thread, handed to `pthread_create` as its argument.
private final class ThreadStart: Sendable {
  let body: @Sendable () -> Void
  init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}

/// Starts a joinable thread running `body`. A plain pthread rather than a
/// task: it blocks in poll(2) and in handlers, which must never hold a
/// thread of Swift's cooperative pool or of an event loop.
func startThread(_ body: @escaping @Sendable () -> Void) throws(ControlMountError) -> pthread_t {
  let context = Unmanaged.passRetained(ThreadStart(body)).toOpaque()
  var thread = pthread_t()
  let result = pthread_create(
    &thread, nil,
    { raw in
      Unmanaged<ThreadStart>.fromOpaque(raw!).takeRetainedValue().body()
      return nil
    }, context)
  if result != 0 {
    Unmanaged<ThreadStart>.fromOpaque(context).release()
    throw .system("pthread_create", errno: result)
  }
  return thread
}

/// The thread-specific slot naming the mount a serving thread serves, so a
/// handler can find its mount (``ControlMount/current``).
let servingMountKey: pthread_key_t = {
  var key = pthread_key_t()
  precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create")
  return key
}()
