import ArgumentParser

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Whole-file input and output for the verbs, with `-` for stdin/stdout.
enum FileIO {
  struct Failure: Error, CustomStringConvertible {
    var description: String
    /// The errno behind the failure, when a system call failed.
    var errno: Int32? = nil
  }

  /// Whether `path` names a directory.
  static func isDirectory(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
  }

  /// Reads all of `path` (`-` for standard input).
  static func read(_ path: String) throws(Failure) -> [UInt8] {
    let fd: Int32
    if path == "-" {
      fd = STDIN_FILENO
    } else {
      fd = open(path, O_RDONLY | O_CLOEXEC)
      if fd < 0 {
        throw Failure(description: "\(path): \(String(cString: strerror(errno)))", errno: errno)
      }
    }
    defer { if fd != STDIN_FILENO { close(fd) } }
    var result: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
      let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
      if n < 0 {
        if errno == EINTR { continue }
        throw Failure(description: "\(path): \(String(cString: strerror(errno)))", errno: errno)
      }
      if n == 0 { return result }
      result.append(contentsOf: chunk[..<n])
    }
  }

  /// Writes `bytes` to `path` (`-` for standard output), replacing it.
  static func write(_ bytes: [UInt8], to path: String) throws(Failure) {
    let fd: Int32
    if path == "-" {
      fd = STDOUT_FILENO
    } else {
      fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
      if fd < 0 { throw Failure(description: "\(path): \(String(cString: strerror(errno)))") }
    }
    defer { if fd != STDOUT_FILENO { close(fd) } }
    var done = 0
    while done < bytes.count {
      let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
      if n < 0 {
        if errno == EINTR { continue }
        throw Failure(description: "\(path): \(String(cString: strerror(errno)))")
      }
      done += n
    }
  }

  /// Prints to standard error.
  static func warn(_ message: String) {
    var line = Array(message.utf8)
    line.append(UInt8(ascii: "\n"))
    _ = line.withUnsafeBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
  }
}
