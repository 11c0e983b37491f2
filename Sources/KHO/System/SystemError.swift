#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A failed system call: the errno it set and the C function that set it.
///
/// Its description reads as a person expects, for example
/// `memfd_create: Cannot allocate memory (ENOMEM)`.
public struct SystemError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The errno value, positive (`ENOMEM` is 12).
  public var errno: Int32
  /// The C function that failed, for example `"memfd_create"`.
  public var function: String

  /// Creates an error for `function` failing with `errno`.
  public init(errno: Int32, function: String) {
    self.errno = errno
    self.function = function
  }

  public var description: String {
    "\(function): \(Self.message(errno)) (\(Self.name(errno)))"
  }

  /// The C library's message for an errno (`strerror`).
  static func message(_ errno: Int32) -> String {
    guard let text = strerror(errno) else { return "errno \(errno)" }
    return String(cString: text)
  }

  /// The symbolic name of the errno values this module meets; others print
  /// as their number.
  static func name(_ errno: Int32) -> String {
    switch errno {
    case EPERM: return "EPERM"
    case ENOENT: return "ENOENT"
    case EINTR: return "EINTR"
    case EIO: return "EIO"
    case E2BIG: return "E2BIG"
    case EBADF: return "EBADF"
    case EAGAIN: return "EAGAIN"
    case ENOMEM: return "ENOMEM"
    case EACCES: return "EACCES"
    case EFAULT: return "EFAULT"
    case EBUSY: return "EBUSY"
    case EEXIST: return "EEXIST"
    case ENODEV: return "ENODEV"
    case EINVAL: return "EINVAL"
    case ENFILE: return "ENFILE"
    case EMFILE: return "EMFILE"
    case EFBIG: return "EFBIG"
    case ENOSPC: return "ENOSPC"
    case ERANGE: return "ERANGE"
    case ENOSYS: return "ENOSYS"
    case EOVERFLOW: return "EOVERFLOW"
    case ENOTSUP: return "ENOTSUP"
    default: return "errno \(errno)"
    }
  }
}

/// Runs one system call shim and turns its errno into a `Result`.
///
/// Every shim in `CKHOSystem` stores errno into its last argument right
/// after the call (0 on success), so nothing between the call and this check
/// can overwrite it. With `retryOnInterrupt`, an `EINTR` repeats the call,
/// as swift-system's `valueOrErrno(retryOnInterrupt:)` does.
@inline(__always)
func systemCall<T>(
  _ function: String, retryOnInterrupt: Bool = true,
  _ call: (UnsafeMutablePointer<Int32>) -> T
) -> Result<T, SystemError> {
  var err: Int32 = 0
  while true {
    let value = call(&err)
    if err == 0 { return .success(value) }
    if retryOnInterrupt && err == EINTR { continue }
    return .failure(SystemError(errno: err, function: function))
  }
}
