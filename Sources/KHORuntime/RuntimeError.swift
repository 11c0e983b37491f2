import KHO

#if canImport(Glibc)
  import Glibc
#endif

/// A failed system call of the runtime: the KHO core's ``SystemError``
/// (the C function and its errno), under the name the runtime's API uses.
public typealias SystemCallError = SystemError

extension SystemError {
  /// Creates an error for `function` failing with `errno`.
  init(_ function: String, errno: Int32) {
    self.init(errno: errno, function: function)
  }
}

/// Runs a system call that returns -1 and sets `errno` on failure, retrying
/// on EINTR: the one place the runtime reads `errno`.
@inline(__always)
func retryingOnInterrupt<T: FixedWidthInteger>(
  _ function: String, _ call: () -> T
) throws(SystemCallError) -> T {
  while true {
    let result = call()
    if result != -1 { return result }
    let error = errno
    if error != EINTR { throw SystemCallError(function, errno: error) }
  }
}
