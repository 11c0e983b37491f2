import ArgumentParser
import KHOSystem

#if canImport(Glibc)
  import Glibc
#endif

/// What the service verbs share: failing with a message, finding the next
/// image's executable, a monotonic clock, and output helpers.
enum Service {
  /// Prints `kho: message` on standard error and exits with status 1.
  static func fail(_ message: String) -> ExitCode {
    FileIO.warn("kho: \(message)")
    return ExitCode(1)
  }

  /// The control mount at `mount`, or exit status 1 with a message saying
  /// why it is not one.
  static func mount(_ mount: String) throws -> ControlFiles {
    do {
      return try ControlFiles.checked(mount)
    } catch {
      throw fail("\(error)")
    }
  }

  /// The absolute path of `executable` as `execvp` would find it: a name
  /// with a slash is taken relative to the working directory, a bare name
  /// is looked up in `$PATH`. Checks that it is an executable regular file.
  static func resolveExecutable(_ executable: String) throws -> String {
    if executable.isEmpty { throw fail("the executable's name is empty") }
    var candidates: [String] = []
    if executable.contains("/") {
      candidates = [absolute(executable)]
    } else {
      let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/local/bin:/usr/bin:/bin"
      for dir in path.split(separator: ":", omittingEmptySubsequences: false) {
        let d = dir.isEmpty ? "." : String(dir)
        candidates.append(absolute(d + "/" + executable))
      }
    }
    var firstError: (String, Int32)?
    for candidate in candidates {
      let mode: UInt32
      do { mode = try FileSystem.status(candidate).mode } catch {
        if firstError == nil || firstError!.1 == ENOENT {
          firstError = (candidate, error.errno.rawValue)
        }
        continue
      }
      if mode & UInt32(S_IFMT) != UInt32(S_IFREG) {
        firstError = (candidate, EACCES)
        continue
      }
      do { try FileSystem.checkExecutable(candidate) } catch {
        firstError = (candidate, error.errno.rawValue)
        continue
      }
      return candidate
    }
    if !executable.contains("/"), firstError?.1 == ENOENT || firstError == nil {
      throw fail("\(executable): not found in $PATH (give a path to the next image's executable)")
    }
    let (path, e) = firstError!
    let what: String
    switch e {
    case ENOENT: what = "the next image's executable does not exist"
    case EACCES:
      what = "not an executable file (check it is a regular file with execute permission)"
    default: what = "cannot use it as the next image"
    }
    throw fail("\(path): \(String(cString: strerror(e))): \(what)")
  }

  /// `path` made absolute against the working directory (without resolving
  /// symbolic links, so a multi-call binary keeps the name it was given).
  static func absolute(_ path: String) -> String {
    if path.hasPrefix("/") { return path }
    guard let raw = getcwd(nil, 0) else { return path }
    defer { free(raw) }
    var cwd = String(cString: raw)
    if cwd.hasSuffix("/") { cwd.removeLast() }
    var rest = Substring(path)
    while rest.hasPrefix("./") {
      rest = rest.dropFirst(2)
      while rest.hasPrefix("/") { rest = rest.dropFirst() }
    }
    return cwd + "/" + rest
  }

  /// Nanoseconds of `CLOCK_MONOTONIC`.
  static func now() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
  }

  /// Milliseconds between two `now()` readings.
  static func milliseconds(_ from: UInt64, _ to: UInt64) -> Double {
    Double(to &- from) / 1_000_000
  }

  /// `4.2 ms`, `0.07 ms`, `1234 ms`.
  static func formatMilliseconds(_ ms: Double) -> String {
    if ms < 1 {
      let hundredths = Int((ms * 100).rounded())
      return "0.\(hundredths < 10 ? "0" : "")\(hundredths) ms"
    }
    let tenths = Int((ms * 10).rounded())
    return "\(tenths / 10).\(tenths % 10) ms"
  }

  /// A JSON number for milliseconds, with microsecond precision.
  static func jsonMilliseconds(_ ms: Double) -> String {
    let micro = Int((ms * 1000).rounded())
    let frac = String(micro % 1000)
    return "\(micro / 1000).\(String(repeating: "0", count: 3 - frac.count))\(frac)"
  }

  /// An argument vector as a shell would need it typed.
  static func shellQuoted(_ arguments: [String]) -> String {
    arguments.map { a -> String in
      let safe = a.utf8.allSatisfy { c in
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)
          || "/-_.,:=+@%".utf8.contains(c)
      }
      if safe && !a.isEmpty { return a }
      return "'" + a.replacingSingleQuotes() + "'"
    }.joined(separator: " ")
  }

  /// `0x400000 (4.0 MiB)`.
  static func hexBytes(_ n: UInt64) -> String {
    "0x\(String(n, radix: 16)) (\(humanBytes(n)))"
  }

  /// A JSON object from keys and already encoded values, in order.
  static func jsonObject(_ members: [(String, String)]) -> String {
    "{" + members.map { "\(jsonString($0.0)):\($0.1)" }.joined(separator: ",") + "}"
  }

  static func json(_ n: UInt64?) -> String { n.map { String($0) } ?? "null" }
  static func json(_ b: Bool?) -> String { b.map { $0 ? "true" : "false" } ?? "null" }
  static func json(_ s: String?) -> String { s.map(jsonString) ?? "null" }
  static func json(_ a: [String]?) -> String {
    a.map { "[" + $0.map(jsonString).joined(separator: ",") + "]" } ?? "null"
  }

  /// The help of the M argument every service verb takes.
  static let mountHelp =
    "The control mount of a running service: the directory where it mounted its control files (e.g. with --control-mount)."
}

extension String {
  fileprivate func replacingSingleQuotes() -> String {
    var out = ""
    for c in self {
      if c == "'" { out += "'\\''" } else { out.append(c) }
    }
    return out
  }
}
