#if canImport(Glibc)
  import Glibc
#endif

/// A failed system call of the runtime: the C function and its errno.
public struct SystemCallError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The C function that failed, e.g. `"posix_spawn"`.
  public var function: String
  /// The errno it left.
  public var errno: Int32

  public init(_ function: String, errno: Int32) {
    self.function = function
    self.errno = errno
  }

  public var description: String {
    "\(function): \(String(cString: strerror(errno))) (errno \(errno))"
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
