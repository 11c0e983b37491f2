import Synchronization
import Testing

@testable import KHOControlFS

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A fresh directory under /tmp, mode 0755 so that another user's refusal
/// comes from the mount, not from the path leading to it.
func makeTemporaryDirectory() -> String {
  var template = Array("/tmp/khofs-XXXXXX".utf8CString)
  let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
  chmod(path, 0o755)
  return path
}

/// Mounts `tree` in a fresh directory, runs `body`, then unmounts and removes
/// the directory whatever happens.
func withMount(
  _ tree: ControlTree, options: ControlMount.Options = .init(),
  _ body: (ControlMount, String) throws -> Void
) throws {
  let directory = makeTemporaryDirectory()
  defer { rmdir(directory) }
  let mount = try ControlMount.mount(at: directory, tree: tree, options: options)
  defer { try? mount.unmount() }
  try body(mount, directory)
}

/// The errno of a failed call, or 0.
func errnoOf(_ result: Int) -> Int32 { result < 0 ? errno : 0 }

/// The contents of `path` read with read(2) in `chunk`-byte calls, or the
/// errno of the open or of a read.
func readFile(_ path: String, chunk: Int = 4096) -> Result<[UInt8], Errno> {
  let fd = open(path, O_RDONLY)
  guard fd >= 0 else { return .failure(Errno(rawValue: errno)) }
  defer { close(fd) }
  var contents: [UInt8] = []
  var buffer = [UInt8](repeating: 0, count: chunk)
  while true {
    let count = read(fd, &buffer, chunk)
    if count < 0 { return .failure(Errno(rawValue: errno)) }
    if count == 0 { return .success(contents) }
    contents += buffer[..<count]
  }
}

/// The bytes of `path`, or `nil` if reading fails.
func readBytes(_ path: String, chunk: Int = 4096) -> [UInt8]? {
  try? readFile(path, chunk: chunk).get()
}

/// The text of `path`, or `nil` if reading fails.
func readText(_ path: String) -> String? {
  guard case .success(let bytes) = readFile(path) else { return nil }
  return String(decoding: bytes, as: UTF8.self)
}

/// Opens `path` as `echo > path` does (write-only, truncating) and writes
/// `bytes` in one call; 0 or the errno of the open or of the write.
func writeFile(_ path: String, _ bytes: [UInt8]) -> Int32 {
  let fd = open(path, O_WRONLY | O_TRUNC)
  guard fd >= 0 else { return errno }
  defer { close(fd) }
  let written = write(fd, bytes, bytes.count)
  if written < 0 { return errno }
  return written == bytes.count ? 0 : EIO
}

func writeFile(_ path: String, _ text: String) -> Int32 { writeFile(path, Array(text.utf8)) }

/// The names `readdir(3)` lists in `path`, without `.` and `..`, sorted.
func listDirectory(_ path: String) -> [String]? {
  guard let directory = opendir(path) else { return nil }
  defer { closedir(directory) }
  var names: [String] = []
  while let entry = readdir(directory) {
    let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
      String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
    }
    if name != "." && name != ".." { names.append(name) }
  }
  return names.sorted()
}

/// Runs `argv` with stdout and stderr captured; its exit status and output.
func run(_ argv: [String]) -> (status: Int32, output: String) {
  var pipe: [Int32] = [-1, -1]
  precondition(Glibc.pipe(&pipe) == 0)
  var actions = posix_spawn_file_actions_t()
  posix_spawn_file_actions_init(&actions)
  defer { posix_spawn_file_actions_destroy(&actions) }
  posix_spawn_file_actions_adddup2(&actions, pipe[1], 1)
  posix_spawn_file_actions_adddup2(&actions, pipe[1], 2)
  posix_spawn_file_actions_addclose(&actions, pipe[0])
  let cArgs = argv.map { strdup($0) } + [nil]
  defer { cArgs.forEach { free($0) } }
  var pid = pid_t()
  let spawned = posix_spawn(&pid, argv[0], &actions, nil, cArgs, nil)
  close(pipe[1])
  defer { close(pipe[0]) }
  guard spawned == 0 else { return (-1, "posix_spawn: \(spawned)") }
  var output: [UInt8] = []
  var buffer = [UInt8](repeating: 0, count: 4096)
  while case let count = read(pipe[0], &buffer, buffer.count), count > 0 {
    output += buffer[..<count]
  }
  var status: Int32 = 0
  while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
  return ((status >> 8) & 0xff, String(decoding: output, as: UTF8.self))
}

/// A value shared between the test and the mount's handlers.
final class Shared<Value: Sendable>: Sendable {
  private let storage: Mutex<Value>
  init(_ value: Value) { storage = Mutex(value) }
  var value: Value {
    get { storage.withLock { $0 } }
    set { storage.withLock { $0 = newValue } }
  }
  func update<R>(_ body: (inout Value) -> R) -> R { storage.withLock { body(&$0) } }
}

/// A thread running `body`, for callers that block in the kernel while the
/// mount is switched.
final class BackgroundCall<Result: Sendable>: Sendable {
  private let result = Shared<Result?>(nil)
  private let thread: SystemThread

  init(_ body: @escaping @Sendable () -> Result) throws {
    let result = self.result
    thread = try SystemThread.joinable(name: "kho-test-call") { result.value = body() }
  }

  /// Whether `body` has returned.
  var isDone: Bool { result.value != nil }

  /// Waits for `body` and returns its result.
  func join() -> Result {
    thread.join()
    return result.value!
  }
}

/// Sleeps `milliseconds`.
func sleep(milliseconds: Int) {
  usleep(UInt32(milliseconds * 1000))
}
