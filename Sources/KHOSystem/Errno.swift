#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// An error number, positive, as the kernel and the C library report it.
///
/// The one errno type of swift-kho: a failed system call carries one
/// (``SystemCallError``), the KHO core's attributes throw one as the kernel's
/// sysfs handlers return `-EINVAL`, and the control file system forwards it
/// unchanged as the error of a FUSE reply, so that `echo 2 > active` prints
/// "Invalid argument":
///
/// ```swift
/// func parseActive(_ bytes: [UInt8]) throws(Errno) -> Bool {
///   switch bytes.first {
///   case UInt8(ascii: "0"): return false
///   case UInt8(ascii: "1"): return true
///   default: throw .invalidArgument
///   }
/// }
/// ```
public struct Errno: Error, Sendable, Hashable, RawRepresentable, CustomStringConvertible {
  /// The errno value, positive (`ENOMEM` is 12).
  public let rawValue: Int32

  /// Wraps an errno value.
  public init(rawValue: Int32) { self.rawValue = rawValue }

  /// `EPERM`: the operation is not permitted.
  public static let notPermitted = Errno(rawValue: EPERM)
  /// `ENOENT`: no such file, attribute or entry (now).
  public static let noSuchFile = Errno(rawValue: ENOENT)
  /// `EINTR`: interrupted by a signal.
  public static let interrupted = Errno(rawValue: EINTR)
  /// `EIO`: an input/output error.
  public static let ioError = Errno(rawValue: EIO)
  /// `E2BIG`: too large, as sysfs refuses a write of more than a page.
  public static let argumentListTooLong = Errno(rawValue: E2BIG)
  /// `EBADF`: not an open descriptor.
  public static let badDescriptor = Errno(rawValue: EBADF)
  /// `EAGAIN`: try again (no thread, or a non-blocking call would block).
  public static let tryAgain = Errno(rawValue: EAGAIN)
  /// `ENOMEM`: no memory, or no scratch region.
  public static let noMemory = Errno(rawValue: ENOMEM)
  /// `EACCES`: this access is not allowed.
  public static let permissionDenied = Errno(rawValue: EACCES)
  /// `EBUSY`: refused in the current state, as KHO refuses while active.
  public static let resourceBusy = Errno(rawValue: EBUSY)
  /// `EEXIST`: already there (a name registered twice).
  public static let fileExists = Errno(rawValue: EEXIST)
  /// `ENODEV`: the device or file went away.
  public static let noSuchDevice = Errno(rawValue: ENODEV)
  /// `EINVAL`: malformed input, or a failed serialize.
  public static let invalidArgument = Errno(rawValue: EINVAL)
  /// `EMFILE`: the process is out of descriptors.
  public static let tooManyOpenFiles = Errno(rawValue: EMFILE)
  /// `ENOSPC`: it does not fit.
  public static let noSpace = Errno(rawValue: ENOSPC)
  /// `EPIPE`: the peer is gone.
  public static let brokenPipe = Errno(rawValue: EPIPE)
  /// `ERANGE`: a number too large for its type.
  public static let outOfRange = Errno(rawValue: ERANGE)
  /// `ENOSYS`: the kernel does not have this call.
  public static let noSuchCall = Errno(rawValue: ENOSYS)

  /// For example `EINVAL (Invalid argument)`.
  public var description: String { "\(name) (\(message))" }

  /// The C library's message (`strerror`), for example `Invalid argument`.
  public var message: String {
    guard let text = strerror(rawValue) else { return "errno \(rawValue)" }
    return String(cString: text)
  }

  /// The symbolic name, for example `EINVAL`; `errno N` for a value not in
  /// this table.
  public var name: String {
    Self.names[rawValue] ?? "errno \(rawValue)"
  }

  /// The value of a symbolic name (`"EACCES"`), or of a decimal number.
  public init?(name: String) {
    if let number = Int32(name), number > 0 {
      self.init(rawValue: number)
      return
    }
    guard let value = Self.names.first(where: { $0.value == name })?.key else { return nil }
    self.init(rawValue: value)
  }

  private static let names: [Int32: String] = [
    EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO", E2BIG: "E2BIG",
    ENOEXEC: "ENOEXEC", EBADF: "EBADF", ECHILD: "ECHILD", EAGAIN: "EAGAIN", ENOMEM: "ENOMEM",
    EACCES: "EACCES", EFAULT: "EFAULT", EBUSY: "EBUSY", EEXIST: "EEXIST", ENODEV: "ENODEV",
    ENOTDIR: "ENOTDIR", EINVAL: "EINVAL", ENFILE: "ENFILE", EMFILE: "EMFILE", EFBIG: "EFBIG",
    ENOSPC: "ENOSPC", EPIPE: "EPIPE", ERANGE: "ERANGE", ENOSYS: "ENOSYS", EOVERFLOW: "EOVERFLOW",
    ENOTSUP: "ENOTSUP", EPROTO: "EPROTO", ECONNRESET: "ECONNRESET", ENOTCONN: "ENOTCONN",
    ECONNABORTED: "ECONNABORTED", ENOTSOCK: "ENOTSOCK", ETIMEDOUT: "ETIMEDOUT",
  ]
}

/// A failed system call: the C function and the ``Errno`` it set.
///
/// Every wrapper of this module throws it. Its description reads as a
/// person expects, for example `memfd_create: Cannot allocate memory (ENOMEM)`.
public struct SystemCallError: Error, Sendable, Hashable, CustomStringConvertible {
  /// The C function that failed, for example `"memfd_create"`.
  public var function: String
  /// What it set `errno` to.
  public var errno: Errno

  /// An error for `function` failing with `errno`.
  public init(_ function: String, _ errno: Errno) {
    self.function = function
    self.errno = errno
  }

  public var description: String { "\(function): \(errno.message) (\(errno.name))" }
}
