#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

// The one place that reads `errno`. Every wrapper of this module funnels its
// raw call through one of these, as swift-system funnels its calls through
// `valueOrErrno`: the fault hook is consulted first (see `SystemCallFaults`),
// errno is read immediately after the call, and EINTR is retried here and
// nowhere else.

/// Runs `call`, which returns -1 and sets `errno` on failure (the C
/// library's convention, which every shim of `CKHOSystem` follows too).
@inline(__always)
package func systemCall<T: FixedWidthInteger>(
  _ function: String, retryOnInterrupt: Bool = true, _ call: () -> T
) -> Result<T, SystemCallError> {
  if let injected = SystemCallFaults.injected(function) {
    return .failure(SystemCallError(function, injected))
  }
  while true {
    let result = call()
    if result != -1 { return .success(result) }
    let error = errno
    if retryOnInterrupt && error == EINTR { continue }
    return .failure(SystemCallError(function, Errno(rawValue: error)))
  }
}

/// Runs `call`, which returns a pointer, or nil and sets `errno` on failure
/// (the shims turn `MAP_FAILED` into nil).
@inline(__always)
package func systemCall<T>(
  _ function: String, _ call: () -> UnsafeMutablePointer<T>?
) -> Result<UnsafeMutablePointer<T>, SystemCallError> {
  if let injected = SystemCallFaults.injected(function) {
    return .failure(SystemCallError(function, injected))
  }
  while true {
    if let pointer = call() { return .success(pointer) }
    let error = errno
    if error == EINTR { continue }
    return .failure(SystemCallError(function, Errno(rawValue: error)))
  }
}

/// Runs `call`, which returns 0 or the error number itself, as the pthread
/// functions and `posix_spawn` do; `errno` is not involved. EINTR is not
/// among their errors.
@inline(__always)
package func errnoReturningCall(
  _ function: String, _ call: () -> Int32
) -> Result<Void, SystemCallError> {
  if let injected = SystemCallFaults.injected(function) {
    return .failure(SystemCallError(function, injected))
  }
  let result = call()
  if result == 0 { return .success(()) }
  return .failure(SystemCallError(function, Errno(rawValue: result)))
}
