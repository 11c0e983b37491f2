import KHOSystem

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Why mounting, adopting, serving or unmounting a control mount failed.
public enum ControlMountError: Error, Sendable, Hashable, CustomStringConvertible {
  /// A system call failed: the C function and its errno.
  case system(SystemCallError)
  /// `fusermount3` exited with this status (it printed why on stderr).
  case fusermount(status: Int32)
  /// No `fusermount3` executable was found, and the process is not root.
  case fusermountNotFound
  /// The kernel's first message was not a FUSE_INIT we can answer.
  case protocolMismatch(String)
  /// A connection state string (from the environment) that does not parse.
  case malformedState(String)

  public var description: String {
    switch self {
    case .system(let error): "\(error)"
    case .fusermount(let status): "fusermount3 failed with status \(status)"
    case .fusermountNotFound: "fusermount3 not found"
    case .protocolMismatch(let why): "FUSE protocol: \(why)"
    case .malformedState(let why): "malformed control connection state: \(why)"
    }
  }
}
