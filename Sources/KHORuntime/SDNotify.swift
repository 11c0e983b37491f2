import KHOSystem

#if canImport(Glibc)
  import Glibc
#endif

/// systemd's `sd_notify` protocol: newline-separated `KEY=VALUE` fields in
/// one datagram to the Unix socket named by `NOTIFY_SOCKET`, optionally with
/// an fd attached (`FDSTORE=1`).
///
/// ```swift
/// let notifier = SDNotifier()        // reads NOTIFY_SOCKET; a no-op without it
/// try notifier.notify(["READY=1", "STATUS=serving"])
/// ```
public struct SDNotifier: Sendable {
  /// The socket path (`@` for the abstract namespace), or `nil` when the
  /// process is not under a service manager.
  public let socketPath: String?

  /// - Parameter socketPath: defaults to `$NOTIFY_SOCKET`.
  public init(socketPath: String? = Environment.value(of: "NOTIFY_SOCKET")) {
    self.socketPath = socketPath.flatMap { $0.isEmpty ? nil : $0 }
  }

  /// Whether a service manager listens.
  public var isEnabled: Bool { socketPath != nil }

  /// Sends `fields`, one per line, with `fd` attached if given. Does nothing
  /// when there is no `NOTIFY_SOCKET`.
  ///
  /// The corresponding C function is `sendmsg`.
  public func notify(_ fields: [String], fd: Int32? = nil) throws(SystemCallError) {
    guard let socketPath else { return }
    let socket = try FileDescriptor.datagramSocket()
    defer { socket.closeIgnoringErrors() }
    let message = Array(fields.joined(separator: "\n").utf8)
    _ = try socket.sendMessage(
      message, descriptors: fd.map { [FileDescriptor(rawValue: $0)] } ?? [], to: socketPath)
  }

  /// `READY=1` with an optional `STATUS=`.
  public func ready(status: String? = nil) throws(SystemCallError) {
    try notify(["READY=1"] + (status.map { ["STATUS=\($0)"] } ?? []))
  }

  /// `RELOADING=1` with `MONOTONIC_USEC=`, as `Type=notify-reload` expects
  /// when a reload (here: a handover) starts.
  public func reloading(status: String? = nil) throws(SystemCallError) {
    try notify(
      ["RELOADING=1", "MONOTONIC_USEC=\(Self.monotonicMicroseconds())"]
        + (status.map { ["STATUS=\($0)"] } ?? []))
  }

  /// `MAINPID=` for a handover that changed the service's PID, with
  /// `READY=1` since the new main process serves.
  public func mainPID(_ pid: pid_t, status: String? = nil) throws(SystemCallError) {
    try notify(["MAINPID=\(pid)", "READY=1"] + (status.map { ["STATUS=\($0)"] } ?? []))
  }

  /// `STATUS=` alone.
  public func status(_ text: String) throws(SystemCallError) {
    try notify(["STATUS=\(text)"])
  }

  /// Hands `fd` to the service manager's fd store under `name`
  /// (`FDSTORE=1`, `FDNAME=`), so it outlives even a crash of the service.
  public func storeFD(_ fd: Int32, name: String) throws(SystemCallError) {
    try notify(["FDSTORE=1", "FDNAME=\(name)"], fd: fd)
  }

  /// Drops every fd stored under `name` (`FDSTOREREMOVE=1`, `FDNAME=`).
  public func removeStoredFDs(name: String) throws(SystemCallError) {
    try notify(["FDSTOREREMOVE=1", "FDNAME=\(name)"])
  }

  /// `CLOCK_MONOTONIC` in microseconds, the clock of `MONOTONIC_USEC`.
  public static func monotonicMicroseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
  }
}

/// Reads the process environment without Foundation.
public enum Environment {
  /// The value of `name`, or `nil`.
  public static func value(of name: String) -> String? {
    ProcessOperations.environmentValue(name)
  }

  /// The value of `name`, removed from the environment, so that it is not
  /// passed on to children or to the next image unless given again.
  ///
  /// The corresponding C functions are `getenv` and `unsetenv`.
  public static func take(_ name: String) -> String? {
    defer { unsetenv(name) }
    return value(of: name)
  }

  /// The whole environment as `KEY=VALUE` strings.
  public static func current() -> [String] { ProcessOperations.environment() }

  /// `environment` with `updates` set (a `nil` value removes the key).
  public static func merging(_ environment: [String], _ updates: [String: String?]) -> [String] {
    var kept = environment.filter { entry in
      let key = entry.split(separator: "=", maxSplits: 1).first.map(String.init) ?? entry
      return updates[key] == nil
    }
    for (key, value) in updates.sorted(by: { $0.key < $1.key }) {
      if let value { kept.append("\(key)=\(value)") }
    }
    return kept
  }
}
