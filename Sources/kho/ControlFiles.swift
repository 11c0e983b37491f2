#if canImport(Glibc)
  import Glibc
#endif

/// A service's control mount, read and written through its files only, as
/// an operator would with `cat` and `echo`.
struct ControlFiles {
  let mount: String

  struct Failure: Error, CustomStringConvertible {
    var path: String
    var errno: Int32
    var description: String { "\(path): \(String(cString: strerror(errno)))" }
  }

  /// The contents of `M/relative`.
  func read(_ relative: String) throws(Failure) -> [UInt8] {
    let path = mount + "/" + relative
    do {
      return try FileIO.read(path)
    } catch {
      throw Failure(path: path, errno: error.errno ?? EIO)
    }
  }

  /// The contents of `M/relative` as text, without the trailing newline.
  func text(_ relative: String) throws(Failure) -> String {
    var s = String(decoding: try read(relative), as: UTF8.self)
    if s.hasSuffix("\n") { s.removeLast() }
    return s
  }

  /// `M/relative` as a `0x%llx` number.
  func number(_ relative: String) throws(Failure) -> UInt64 {
    let t = try text(relative)
    guard let v = parseCNumber(Substring(t)) else {
      throw Failure(path: mount + "/" + relative, errno: EINVAL)
    }
    return v
  }

  /// Writes `value` to `M/relative` in one `write(2)`, as `echo` does.
  func write(_ relative: String, _ value: String) throws(Failure) {
    let path = mount + "/" + relative
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    if fd < 0 { throw Failure(path: path, errno: errno) }
    defer { close(fd) }
    let bytes = Array(value.utf8)
    while true {
      let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
      if n >= 0 { return }
      if errno != EINTR { throw Failure(path: path, errno: errno) }
    }
  }

  /// The scratch region from `scratch_phys` and `scratch_len`.
  func scratch() throws(Failure) -> KHORange {
    KHORange(
      address: try number("kernel/kho/scratch_phys"), length: try number("kernel/kho/scratch_len"))
  }
}
