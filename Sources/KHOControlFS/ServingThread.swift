#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The thread-specific slot naming the mount a serving thread serves, so a
/// handler can find its mount (``ControlMount/current``).
let servingMountKey: pthread_key_t = {
  var key = pthread_key_t()
  precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create")
  return key
}()
