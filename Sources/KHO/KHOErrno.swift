#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// An errno as the kernel's KHO code returns it, positive.
///
/// Everything on the ABI boundary (attributes, parsers, notifier results)
/// throws this, so a FUSE layer can forward ``rawValue`` as the reply's
/// error without translating:
///
/// ```swift
/// do { _ = try attributes.write("kernel/kho/active", Array("2\n".utf8)) }
/// catch { reply(error: error.rawValue) }  // EINVAL
/// ```
public struct KHOErrno: Error, Sendable, Hashable, RawRepresentable, CustomStringConvertible {
  /// The errno value, positive.
  public let rawValue: Int32
  public init(rawValue: Int32) { self.rawValue = rawValue }

  /// `ENOENT`: the attribute does not exist (now).
  public static let noSuchFile = KHOErrno(rawValue: ENOENT)
  /// `E2BIG`: a write of more than a page to an attribute.
  public static let argumentListTooLong = KHOErrno(rawValue: E2BIG)
  /// `ENOMEM`: no scratch region, or no memory.
  public static let noMemory = KHOErrno(rawValue: ENOMEM)
  /// `EACCES`: the attribute does not allow this access.
  public static let permissionDenied = KHOErrno(rawValue: EACCES)
  /// `EBUSY`: refused while KHO is active.
  public static let resourceBusy = KHOErrno(rawValue: EBUSY)
  /// `EEXIST`: already registered.
  public static let fileExists = KHOErrno(rawValue: EEXIST)
  /// `EINVAL`: malformed input, or a failed serialize.
  public static let invalidArgument = KHOErrno(rawValue: EINVAL)
  /// `ENOSPC`: the blob does not fit in its buffer.
  public static let noSpace = KHOErrno(rawValue: ENOSPC)
  /// `ERANGE`: a number too large for its type.
  public static let outOfRange = KHOErrno(rawValue: ERANGE)

  /// For example `EINVAL (Invalid argument)`.
  public var description: String {
    "\(SystemError.name(rawValue)) (\(SystemError.message(rawValue)))"
  }
}
