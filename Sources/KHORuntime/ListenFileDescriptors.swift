import KHOSystem

#if canImport(Glibc)
  import Glibc
#endif

/// The fds a service manager passes at start, systemd's `sd_listen_fds`
/// protocol: `LISTEN_PID` (must be this process), `LISTEN_FDS` (a count, the
/// fds being 3, 4, ...), `LISTEN_FDNAMES` (colon-separated names, one per
/// fd). systemd's fd store (`FDSTORE=1`) and `kho run` give back what a
/// service stored this way after it died and was restarted.
public enum ListenFileDescriptors {
  /// The first passed fd, `SD_LISTEN_FDS_START`.
  public static let start: Int32 = 3
  /// The name under which the runtime stores the arena.
  public static let arenaName = "kho-arena"
  /// More than this is not a service manager talking.
  static let maximum = 4096

  /// Reads and removes the variables (`sd_listen_fds(1)`): the passed fds
  /// by name, made close-on-exec. Unnamed ones are called `unknown`, as
  /// systemd does. Empty when the variables are absent, malformed, or meant
  /// for another process.
  public static func take() -> [(name: String, fd: Int32)] {
    defer {
      for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] { unsetenv(name) }
    }
    guard let pid = Environment.value(of: "LISTEN_PID").flatMap({ pid_t($0) }), pid == getpid(),
      let count = Environment.value(of: "LISTEN_FDS").flatMap({ Int($0) }),
      (1...maximum).contains(count)
    else { return [] }
    let names = Environment.value(of: "LISTEN_FDNAMES").map {
      $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
    }
    var result: [(name: String, fd: Int32)] = []
    for i in 0..<count {
      let fd = start + Int32(i)
      guard (try? FileDescriptor(rawValue: fd).setCloseOnExec(true)) != nil else { continue }
      let name = names.flatMap { i < $0.count && !$0[i].isEmpty ? $0[i] : nil } ?? "unknown"
      result.append((name, fd))
    }
    return result
  }
}
