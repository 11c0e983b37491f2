import ArgumentParser
import KHOSystem

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
    do throws(SystemCallError) {
      let fd = path == "-" ? FileDescriptor(rawValue: STDIN_FILENO) : try .open(path, O_RDONLY)
      defer { if fd.rawValue != STDIN_FILENO { fd.closeIgnoringErrors() } }
      var result: [UInt8] = []
      while true {
        let chunk = try fd.read(upTo: 1 << 16)
        if chunk.isEmpty { return result }
        result += chunk
      }
    } catch {
      throw Failure(description: "\(path): \(error.errno.message)", errno: error.errno.rawValue)
    }
  }

  /// Writes `bytes` to `path` (`-` for standard output), replacing it.
  static func write(_ bytes: [UInt8], to path: String) throws(Failure) {
    do throws(SystemCallError) {
      let fd =
        path == "-"
        ? FileDescriptor(rawValue: STDOUT_FILENO)
        : try .open(path, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o644)
      defer { if fd.rawValue != STDOUT_FILENO { fd.closeIgnoringErrors() } }
      try fd.writeAll(bytes)
    } catch {
      throw Failure(description: "\(path): \(error.errno.message)", errno: error.errno.rawValue)
    }
  }

  /// Prints to standard error.
  static func warn(_ message: String) {
    var line = Array(message.utf8)
    line.append(UInt8(ascii: "\n"))
    _ = line.withUnsafeBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
  }
}
