import KHOSystem

#if canImport(Glibc)
  import Glibc
#endif

/// A service's control mount, read and written through its files only, as
/// an operator would with `cat` and `echo`.
struct ControlFiles {
  let mount: String

  /// A control file's system call failed: the file, the errno, and (when
  /// the errno has a known meaning for that file) what it means.
  struct Failure: Error, CustomStringConvertible {
    var path: String
    var errno: Int32
    /// What the errno means for this file, e.g. "the service has no scratch
    /// region (start it with --kho-scratch)".
    var hint: String? = nil
    var errnoText: String { Errno(rawValue: errno).message }
    var description: String {
      "\(path): \(errnoText)" + (hint.map { ": " + $0 } ?? "")
    }
  }

  /// The contents of `M/relative`.
  func read(_ relative: String) throws(Failure) -> [UInt8] {
    let path = mount + "/" + relative
    do {
      return try FileIO.read(path)
    } catch {
      let e = error.errno ?? EIO
      throw Failure(path: path, errno: e, hint: Self.hint(relative, e, writing: false))
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
    do throws(SystemCallError) {
      let fd = try FileDescriptor.open(path, O_WRONLY)
      defer { fd.closeIgnoringErrors() }
      let bytes = Array(value.utf8)
      // One write(2), as echo does: an attribute takes its value whole.
      _ = try fd.write(bytes)
    } catch {
      let e = error.errno.rawValue
      throw Failure(path: path, errno: e, hint: Self.hint(relative, e, writing: true))
    }
  }

  /// The scratch region from `scratch_phys` and `scratch_len`.
  func scratch() throws(Failure) -> KHORange {
    KHORange(
      address: try number("kernel/kho/scratch_phys"), length: try number("kernel/kho/scratch_len"))
  }
}

// MARK: - The files of the control ABI, as the service verbs use them

extension ControlFiles {
  /// The files of the control mount, relative to it (as
  /// `KHOControlFS.ControlPaths` names them).
  enum Path {
    static let active = "kernel/kho/active"
    static let dtMax = "kernel/kho/dt_max"
    static let scratchLength = "kernel/kho/scratch_len"
    static let scratchPhysical = "kernel/kho/scratch_phys"
    static let dt = "kernel/kho/dt"
    static let generation = "kernel/kho/generation"
    static let preservedBytes = "kernel/kho/preserved_bytes"
    static let boot = "kernel/kho/boot"
    static let preservationRanges = "kernel/kho/preservation/ranges"
    static let firmwareDT = "firmware/kho/dt"
    static let kexecLoaded = "kernel/kexec_loaded"
    static let kexecImage = "kernel/kexec/image"
    static let kexecMode = "kernel/kexec/mode"
    static let kexecUnload = "kernel/kexec/unload"
    static let kexecExecute = "kernel/kexec/execute"
  }

  /// The largest write an attribute accepts (larger ones fail with E2BIG).
  static let maximumWrite = 4096

  /// The control mount at `mount` (trailing slashes dropped), after
  /// checking it is one: a directory with `kernel/kho/active`.
  static func checked(_ mount: String) throws(Failure) -> ControlFiles {
    var m = mount
    while m.count > 1 && m.hasSuffix("/") { m.removeLast() }
    let mode: UInt32
    do { mode = try FileSystem.status(m).mode } catch {
      let e = error.errno.rawValue
      throw Failure(
        path: m, errno: e,
        hint: e == ENOTCONN
          ? "the service that served this control mount is gone (unmount it with fusermount3 -u \(m))"
          : "no such directory (give the directory where the service mounted its control files)")
    }
    if mode & UInt32(S_IFMT) != UInt32(S_IFDIR) {
      throw Failure(
        path: m, errno: ENOTDIR,
        hint: "give the directory where the service mounted its control files")
    }
    let files = ControlFiles(mount: m)
    do { _ = try FileSystem.status(m + "/" + Path.active) } catch {
      let e = error.errno.rawValue
      throw Failure(
        path: m + "/" + Path.active, errno: e,
        hint: e == ENOENT
          ? "\(m) is not a control mount (is the service running, and started with a control mount here?)"
          : hint(Path.active, e, writing: false))
    }
    return files
  }

  /// Whether `M/relative` exists (`stat` succeeds).
  func exists(_ relative: String) -> Bool {
    var st = stat()
    return stat(mount + "/" + relative, &st) == 0
  }

  /// The size `stat` reports for `M/relative`, or nil when it is absent.
  func size(_ relative: String) -> UInt64? {
    var st = stat()
    guard stat(mount + "/" + relative, &st) == 0 else { return nil }
    return UInt64(st.st_size)
  }

  /// `M/relative` as a `0x%llx` or `%llu` number, or nil when the file does
  /// not exist (a service older than the file).
  func optionalNumber(_ relative: String) throws(Failure) -> UInt64? {
    do {
      return try number(relative)
    } catch {
      if error.errno == ENOENT { return nil }
      throw error
    }
  }

  /// `M/relative` as a boolean attribute (`"0\n"`/`"1\n"`).
  func flag(_ relative: String) throws(Failure) -> Bool {
    let t = try text(relative)
    switch t {
    case "1": return true
    case "0": return false
    default:
      throw Failure(
        path: mount + "/" + relative, errno: EINVAL,
        hint: "unexpected contents \(t.debugDescription)")
    }
  }

  /// The staged next image: its argument vector, or nil when none is staged.
  func image() throws(Failure) -> [String]? {
    let bytes = try read(Path.kexecImage)
    if bytes.isEmpty { return nil }
    let separator: UInt8 = bytes.contains(0) ? 0 : UInt8(ascii: "\n")
    var fields = bytes.split(separator: separator, omittingEmptySubsequences: false)
    if fields.last?.isEmpty == true { fields.removeLast() }
    return fields.map { String(decoding: $0, as: UTF8.self) }
  }

  /// What a write to `kernel/kexec/image` holds for `arguments`: one per
  /// line, or NUL-separated when an argument contains a newline.
  static func imageBytes(_ arguments: [String]) -> String {
    let separator = arguments.contains { $0.contains("\n") } ? "\0" : "\n"
    return arguments.map { $0 + separator }.joined()
  }

  /// What an errno means for a control file, for the error message.
  static func hint(_ relative: String, _ e: Int32, writing: Bool) -> String? {
    switch (relative, e) {
    case (_, ENOTCONN):
      return
        "the service that served this control mount is gone (unmount the mount with fusermount3 -u)"
    case (_, EACCES) where relative != Path.kexecExecute, (_, EPERM):
      return "permission denied: the control mount refuses other users than the service's"
    case (_, E2BIG):
      return "a control file takes at most \(maximumWrite) bytes per write"
    case (Path.active, ENOMEM):
      return "the service has no scratch region (start it with --kho-scratch)"
    case (Path.active, EINVAL) where writing:
      return
        "serialization failed: a subsystem refused to serialize its state (see the service's log)"
    case (Path.dtMax, EINVAL) where writing:
      return "dt_max takes a number (0x hex, leading 0 octal, or decimal)"
    case (Path.kexecImage, EINVAL) where writing:
      return "the image must be the executable's absolute path, then its arguments"
    case (Path.kexecMode, EINVAL) where writing:
      return "the mode is in-place or overlapped"
    case (Path.kexecExecute, ENOENT):
      return "the next image's executable does not exist"
    case (Path.kexecExecute, EACCES):
      return "the next image's executable may not be executed (permissions, or a noexec mount)"
    case (Path.kexecExecute, ENOEXEC):
      return "the next image's executable is not in a format the system can run"
    case (Path.kexecExecute, ECHILD):
      return "the overlapped next image exited before it was ready"
    case (Path.kexecExecute, ETIMEDOUT):
      return "the next image did not report ready in time"
    case (Path.kexecExecute, EINVAL):
      return "no next image is staged (load one with kho load)"
    case (Path.kexecExecute, EBUSY):
      return "a handover is already under way"
    case (_, ENOENT) where relative == Path.dt:
      return "the blob exists only while KHO is active"
    case (_, ENOENT) where relative == Path.firmwareDT:
      return "the service started cold (no incoming blob)"
    case (_, ENOENT):
      return "the control mount has no such file (a different version of the service?)"
    default:
      return nil
    }
  }
}
