#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The errno a control file's handler gives back to the process that called
/// `read(2)` or `write(2)` on it, positive.
///
/// A handler throws it; the file system forwards it unchanged as the error
/// of the FUSE reply, so `echo 2 > active` prints "Invalid argument":
///
/// ```swift
/// let active = ControlFile.attribute(mode: 0o600, show: { Array("0\n".utf8) }) {
///   bytes throws(FileError) in
///   guard bytes.first == UInt8(ascii: "1") else { throw .invalidArgument }
/// }
/// ```
public struct FileError: Error, Sendable, Hashable, CustomStringConvertible {
  /// The errno value, positive (`EINVAL`, `ENOMEM`...).
  public var errno: Int32

  /// An error carrying `errno` (positive).
  public init(errno: Int32) { self.errno = errno }

  /// `EINVAL`: malformed input.
  public static let invalidArgument = FileError(errno: EINVAL)
  /// `ENOENT`: the file does not exist (now).
  public static let noSuchFile = FileError(errno: ENOENT)
  /// `EACCES`: the file does not allow this access.
  public static let permissionDenied = FileError(errno: EACCES)
  /// `EBUSY`: refused in the current state.
  public static let busy = FileError(errno: EBUSY)
  /// `E2BIG`: a write of more than a page, as sysfs refuses it.
  public static let tooBig = FileError(errno: E2BIG)
  /// `ENODEV`: the file went away while it was open.
  public static let noDevice = FileError(errno: ENODEV)

  /// For example `errno 22 (Invalid argument)`.
  public var description: String {
    "errno \(errno) (\(String(cString: strerror(errno))))"
  }
}
