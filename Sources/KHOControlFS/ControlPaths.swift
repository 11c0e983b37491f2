/// The files of the control ABI, relative to the mount point: the seed's
/// `/sys/kernel/kho` and `/sys/firmware/kho` files, and the files that stand
/// for `kexec_file_load` and `reboot(LINUX_REBOOT_CMD_KEXEC)`.
///
/// ```swift
/// let tree = ControlTree([ControlPaths.kexecLoaded: .attribute(mode: 0o444) { Array("0\n".utf8) }])
/// ```
public enum ControlPaths {
  /// 0600: `"0\n"`/`"1\n"`; writing a boolean serializes (1) or aborts (0).
  public static let active = "kernel/kho/active"
  /// 0600: `"0x%llx\n"`, the largest blob.
  public static let dtMax = "kernel/kho/dt_max"
  /// 0400: `"0x%llx\n"`, the scratch length.
  public static let scratchLength = "kernel/kho/scratch_len"
  /// 0400: `"0x%llx\n"`, the scratch offset in the arena.
  public static let scratchPhysical = "kernel/kho/scratch_phys"
  /// 0400: the outgoing blob; exists only while active.
  public static let dt = "kernel/kho/dt"
  /// 0400: the incoming blob, after a KHO boot only.
  public static let firmwareDT = "firmware/kho/dt"
  /// 0444: `"1\n"` while a next image is staged, else `"0\n"`.
  public static let kexecLoaded = "kernel/kexec_loaded"
  /// 0600: stages the next image (``KexecImage``); reads show it.
  public static let kexecImage = "kernel/kexec/image"
  /// 0600: `in-place` or `overlapped` (``KexecMode``).
  public static let kexecMode = "kernel/kexec/mode"
  /// 0200: writing `1` unloads the staged image.
  public static let kexecUnload = "kernel/kexec/unload"
  /// 0200: writing `1` executes the staged image; the write returns once
  /// the next image serves, or fails with the errno of the failure.
  public static let kexecExecute = "kernel/kexec/execute"
}

/// The next image as staged by a write to `kernel/kexec/image`: the
/// executable and its arguments, as `execve` takes them.
///
/// A write holds either one argument per line (`printf '%s\n' /usr/bin/svc
/// --port 11211 > image`; a final newline is optional) or, as soon as it
/// contains a NUL byte, NUL-separated arguments (`printf '%s\0' ...`; a final
/// NUL is optional), for arguments that contain newlines. The first argument
/// is the executable and must be an absolute path. Reading the file shows
/// one argument per line, or the NUL form if an argument contains a newline;
/// nothing while no image is staged.
///
/// ```swift
/// let image = try KexecImage(parsing: Array("/usr/bin/svc\n--port\n11211\n".utf8))
/// image.arguments  // ["/usr/bin/svc", "--port", "11211"]
/// ```
public struct KexecImage: Sendable, Hashable {
  /// The argument vector; `arguments[0]` is the executable's path.
  public var arguments: [String]

  /// The executable's absolute path.
  public var executable: String { arguments[0] }

  /// An image from its argument vector, whose first element is the
  /// executable's absolute path.
  public init(arguments: [String]) throws(Errno) {
    guard let first = arguments.first, first.hasPrefix("/"),
      arguments.allSatisfy({ !$0.utf8.contains(0) })
    else { throw .invalidArgument }
    self.arguments = arguments
  }

  /// Parses the bytes of one write.
  ///
  /// - Throws: EINVAL for an empty write, a relative executable path, or
  ///   bytes that are not UTF-8.
  public init(parsing bytes: [UInt8]) throws(Errno) {
    let separator: UInt8 = bytes.contains(0) ? 0 : UInt8(ascii: "\n")
    var fields = bytes.split(separator: separator, omittingEmptySubsequences: false)
    if fields.last?.isEmpty == true { fields.removeLast() }
    var arguments: [String] = []
    for field in fields {
      guard let argument = String(validating: field, as: UTF8.self) else { throw .invalidArgument }
      arguments.append(argument)
    }
    try self.init(arguments: arguments)
  }

  /// What reading `kernel/kexec/image` shows.
  public var shown: [UInt8] {
    let separator = arguments.contains { $0.contains("\n") } ? "\0" : "\n"
    return Array(arguments.map { $0 + separator }.joined().utf8)
  }
}

/// How `kernel/kexec/execute` runs the next image, as written to
/// `kernel/kexec/mode`.
public enum KexecMode: String, Sendable, CaseIterable {
  /// `execve` in place, like `kexec -e`: the PID stays.
  case inPlace = "in-place"
  /// Spawn the next image, wait until it serves, then exit; roll back if it
  /// fails.
  case overlapped

  /// Parses one write: a mode name, optionally followed by a newline.
  ///
  /// - Throws: EINVAL for anything else.
  public init(parsing bytes: [UInt8]) throws(Errno) {
    let text = bytes.last == UInt8(ascii: "\n") ? bytes.dropLast() : bytes[...]
    guard let mode = KexecMode(rawValue: String(decoding: text, as: UTF8.self)) else {
      throw .invalidArgument
    }
    self = mode
  }

  /// What reading `kernel/kexec/mode` shows: the name and a newline.
  public var shown: [UInt8] { Array((rawValue + "\n").utf8) }
}

extension ControlFile {
  /// Checks the bytes written to a trigger (`unload`, `execute`): `1`,
  /// optionally followed by a newline.
  ///
  /// - Throws: EINVAL for anything else.
  public static func parseTrigger(_ bytes: [UInt8]) throws(Errno) {
    guard bytes == [UInt8(ascii: "1")] || bytes == Array("1\n".utf8) else { throw .invalidArgument }
  }
}
