#if canImport(Glibc)
  import Glibc
#endif

/// How a process ended, as `waitpid` reports it (or not at all, for a main
/// process that is not the keeper's child).
enum ExitStatus: Equatable, CustomStringConvertible {
  case exited(Int32)
  case signaled(Int32)
  /// The main process was not a child of the keeper (a `MAINPID=` whose
  /// parent was still alive when it died): only its death is known.
  case unknown

  /// Decodes a `waitpid` status word (`WIFEXITED` and friends are macros
  /// Swift cannot see).
  init(waitStatus s: Int32) {
    if s & 0x7f == 0 {
      self = .exited((s >> 8) & 0xff)
    } else {
      self = .signaled(s & 0x7f)
    }
  }

  /// A clean exit: status 0.
  var isSuccess: Bool { self == .exited(0) }

  /// The keeper's own exit status for it: the child's, 128 + the signal
  /// (as a shell reports it), or 1 when unknown.
  var code: Int32 {
    switch self {
    case .exited(let c): return c
    case .signaled(let s): return 128 + s
    case .unknown: return 1
    }
  }

  var description: String {
    switch self {
    case .exited(let c): return "exited with status \(c)"
    case .signaled(let s): return "killed by signal \(s) (\(KeeperSystem.signalName(s)))"
    case .unknown: return "exited (status unknown: not a child of kho run)"
    }
  }
}
