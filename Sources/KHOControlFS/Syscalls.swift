#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// An errno from a failed system call, positive.
struct Errno: Error, Hashable {
  var code: Int32
}

/// The one place that reads `errno`: runs a system call and returns its
/// result, or the errno it set, read immediately after the call; retries
/// while the call is interrupted (EINTR).
func systemCall<T: BinaryInteger>(_ body: () -> T) -> Result<T, Errno> {
  while true {
    let result = body()
    if result != -1 { return .success(result) }
    let error = errno
    if error != EINTR { return .failure(Errno(code: error)) }
  }
}

/// ``systemCall(_:)``, throwing a ``ControlMountError/system(_:errno:)``
/// that names `call`.
func systemCall<T: BinaryInteger>(_ call: String, _ body: () -> T) throws(ControlMountError) -> T {
  let result: Result<T, Errno> = systemCall(body)
  switch result {
  case .success(let value): return value
  case .failure(let error): throw .system(call, errno: error.code)
  }
}

/// Throws ``ControlMountError/system(_:errno:)`` for a shim's nonzero errno
/// result.
func check(_ call: String, _ errnoResult: Int32) throws(ControlMountError) {
  if errnoResult != 0 { throw .system(call, errno: errnoResult) }
}

/// close(2), ignoring errors: on Linux the fd is released even when close
/// reports one, and retrying could close a reused fd.
func closeDescriptor(_ fd: Int32) {
  _ = close(fd)
}

/// The errno `stat(2)` gives for `path`, or 0 if it succeeds.
func statErrno(_ path: String) -> Int32 {
  var info = stat()
  let result: Result<Int32, Errno> = systemCall { stat(path, &info) }
  switch result {
  case .success: return 0
  case .failure(let error): return error.code
  }
}

/// Writes all of `bytes` to `fd` in one call, as /dev/fuse requires for a
/// reply. Returns the errno on failure.
func writeMessage(_ fd: Int32, _ bytes: [UInt8]) -> Int32 {
  let result: Result<Int, Errno> = bytes.withUnsafeBytes { raw in
    systemCall { write(fd, raw.baseAddress, raw.count) }
  }
  switch result {
  case .success: return 0
  case .failure(let error): return error.code
  }
}
