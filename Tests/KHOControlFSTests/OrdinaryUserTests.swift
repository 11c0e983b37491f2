import Testing

@testable import KHOControlFS

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Whether users other than root may open /dev/fuse: `fusermount3` opens it
/// with the caller's rights, so with the usual mode 0666 ordinary users can
/// mount; some machines (this project's VMs) ship it 0600, root only.
let devFuseOpenToAll: Bool = {
  var info = stat()
  return stat("/dev/fuse", &info) == 0 && info.st_mode & 0o006 == 0o006
}()

@Suite(.enabled(if: devFuseOpenToAll, "/dev/fuse is not open to ordinary users here"))
struct OrdinaryUserTests {
  /// As `nobody` (in a child process), the mount goes through the setuid
  /// `fusermount3`, a killed service's stale mount is recovered with
  /// `fusermount3 -u -z`, and the clean unmount leaves nothing behind.
  @Test func mountsRecoversAndUnmountsThroughFusermount() async {
    await #expect(processExitsWith: .success) {
      guard setgroups(0, nil) == 0, setgid(65534) == 0, setuid(65534) == 0 else { exit(2) }
      let tree = ControlTree([
        "kernel/kho/active": .attribute(mode: 0o600) { Array("0\n".utf8) },
        "kernel/kho/scratch_len": .attribute(mode: 0o400) { Array("0x0\n".utf8) },
      ])
      let directory = makeTemporaryDirectory()
      defer { rmdir(directory) }
      do {
        let killed = try ControlMount.mount(at: directory, tree: tree)
        guard readText(directory + "/kernel/kho/active") == "0\n" else { exit(3) }
        killed.abandon()
        var info = stat()
        guard stat(directory, &info) != 0, errno == ENOTCONN else { exit(4) }
        let mount = try ControlMount.mount(at: directory, tree: tree)
        guard readText(directory + "/kernel/kho/active") == "0\n",
          writeFile(directory + "/kernel/kho/scratch_len", "1\n") == EACCES
        else { exit(5) }
        try mount.unmount()
        guard stat(directory, &info) == 0, info.st_dev != 0, listDirectory(directory) == [] else {
          exit(6)
        }
      } catch {
        print(error)
        exit(7)
      }
    }
  }
}
