import Synchronization
import Testing

@testable import KHOControlFS

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A miniature of the KHO attribute model: `active` (0600) toggles the
/// presence of a multi-KB `dt` (0400); `scratch_len` is read-only.
struct ToyKHO: Sendable {
  let active = Shared(false)
  let blob: [UInt8] = (0..<6000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) }
  var tag = "0x1000"

  var tree: ControlTree {
    let active = active
    let blob = blob
    let tag = tag
    return ControlTree([
      "kernel/kho/active": .attribute(mode: 0o600) {
        Array((active.value ? "1\n" : "0\n").utf8)
      } store: { bytes throws(Errno) in
        switch bytes.first {
        case UInt8(ascii: "1"): active.value = true
        case UInt8(ascii: "0"): active.value = false
        default: throw .invalidArgument
        }
      },
      "kernel/kho/scratch_len": .attribute(mode: 0o400) { Array("\(tag)\n".utf8) },
      "kernel/kho/dt": .blob(mode: 0o400) { active.value ? blob : nil },
      "kernel/kexec_loaded": .attribute(mode: 0o444) { Array("0\n".utf8) },
    ])
  }
}

@Suite(.serialized) struct ControlMountTests {
  @Test func attributesReadAndWriteWithTheKernelsErrnos() throws {
    let kho = ToyKHO()
    try withMount(kho.tree) { _, root in
      let active = root + "/kernel/kho/active"
      #expect(readText(active) == "0\n")
      #expect(writeFile(active, "1\n") == 0)
      #expect(readText(active) == "1\n")
      #expect(writeFile(active, "2\n") == EINVAL)
      #expect(writeFile(active, "0\n") == 0)
      #expect(writeFile(active, [UInt8](repeating: UInt8(ascii: "1"), count: 4097)) == E2BIG)
      #expect(writeFile(active, [UInt8](repeating: UInt8(ascii: "1"), count: 100_000)) == E2BIG)
      #expect(readText(active) == "0\n")
      // Read-only files refuse opening for writing, even to root.
      #expect(writeFile(root + "/kernel/kho/scratch_len", "1\n") == EACCES)
      #expect(errnoOf(Int(open(root + "/kernel/kho/scratch_len", O_RDWR))) == EACCES)
      #expect(readText(root + "/kernel/kho/scratch_len") == "0x1000\n")
      #expect(readText(root + "/kernel/kexec_loaded") == "0\n")
      #expect(writeFile(root + "/kernel/nothing", "1\n") == ENOENT)
    }
  }

  @Test func shellRedirectionTruncatesAndReportsErrors() throws {
    let kho = ToyKHO()
    try withMount(kho.tree) { _, root in
      let active = root + "/kernel/kho/active"
      #expect(run(["/bin/sh", "-c", "echo 1 > \(active)"]).status == 0)
      #expect(kho.active.value)
      let refused = run(["/bin/bash", "-c", "echo 2 > \(active)"])
      #expect(refused.status != 0)
      // dash says "I/O error" for any failed echo; bash names the errno.
      #expect(refused.output.contains("Invalid argument"))
      #expect(run(["/bin/cat", active]).output == "1\n")
    }
  }

  @Test func dtExistsOnlyWhileActive() throws {
    let kho = ToyKHO()
    try withMount(kho.tree) { _, root in
      let dt = root + "/kernel/kho/dt"
      var info = stat()
      #expect(errnoOf(Int(stat(dt, &info))) == ENOENT)
      #expect(errnoOf(Int(open(dt, O_RDONLY))) == ENOENT)
      #expect(listDirectory(root + "/kernel/kho") == ["active", "scratch_len"])
      kho.active.value = true
      #expect(stat(dt, &info) == 0)
      #expect(info.st_size == 6000)
      #expect(info.st_mode & 0o777 == 0o400)
      #expect(readBytes(dt) == kho.blob)
      #expect(listDirectory(root + "/kernel/kho") == ["active", "dt", "scratch_len"])
      kho.active.value = false
      #expect(errnoOf(Int(open(dt, O_RDONLY))) == ENOENT)
    }
  }

  @Test func listsTheTree() throws {
    try withMount(ToyKHO().tree) { _, root in
      #expect(listDirectory(root) == ["kernel"])
      #expect(listDirectory(root + "/kernel") == ["kexec_loaded", "kho"])
      var info = stat()
      #expect(stat(root + "/kernel/kho/active", &info) == 0)
      #expect(info.st_mode == S_IFREG | 0o600)
      #expect(info.st_uid == geteuid())
      #expect(stat(root + "/kernel", &info) == 0)
      #expect(info.st_mode == S_IFDIR | 0o755)
    }
  }

  @Test func readsAtEveryOffsetOfAMultiKilobyteFile() throws {
    let kho = ToyKHO()
    kho.active.value = true
    try withMount(kho.tree) { _, root in
      let fd = open(root + "/kernel/kho/dt", O_RDONLY)
      try #require(fd >= 0)
      defer { close(fd) }
      var buffer = [UInt8](repeating: 0, count: 100)
      var mismatches = 0
      for offset in 0...kho.blob.count + 10 {
        let count = pread(fd, &buffer, buffer.count, off_t(offset))
        let expected = ControlFile.slice(kho.blob, offset: offset, count: buffer.count)
        if count != expected.count || Array(buffer[..<max(count, 0)]) != expected {
          mismatches += 1
        }
      }
      #expect(mismatches == 0)
      for chunk in [1, 7, 4096, 65536] {
        #expect(readBytes(root + "/kernel/kho/dt", chunk: chunk) == kho.blob)
      }
    }
  }

  @Test func concurrentWritersAreSerialised() throws {
    let inside = Atomic<Bool>(false)
    let reentered = Atomic<Int>(0)
    let stores = Atomic<Int>(0)
    let tree = ControlTree([
      "slow": .attribute(mode: 0o600) {
        Array("x\n".utf8)
      } store: { _ in
        if inside.exchange(true, ordering: .sequentiallyConsistent) {
          reentered.add(1, ordering: .relaxed)
        }
        usleep(500)
        stores.add(1, ordering: .relaxed)
        inside.store(false, ordering: .sequentiallyConsistent)
      }
    ])
    try withMount(tree) { _, root in
      let writers = try (0..<6).map { _ in
        try BackgroundCall { (0..<25).map { _ in writeFile(root + "/slow", "1\n") } }
      }
      let results = writers.flatMap { $0.join() }
      #expect(results.allSatisfy { $0 == 0 })
      #expect(stores.load(ordering: .relaxed) == 150)
      #expect(reentered.load(ordering: .relaxed) == 0)
    }
  }

  @Test func otherUsersAreRefusedByModeBits() throws {
    let setpriv = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    let kho = ToyKHO()
    // With allow_other, the modes decide: 0444 is readable, 0600 is not.
    try withMount(kho.tree, options: .init(allowOther: true)) { _, root in
      #expect(run(setpriv + ["/bin/cat", root + "/kernel/kexec_loaded"]) == (0, "0\n"))
      let refused = run(setpriv + ["/bin/cat", root + "/kernel/kho/active"])
      #expect(refused.status != 0)
      #expect(refused.output.contains("Permission denied"))
      let write = run(setpriv + ["/bin/sh", "-c", "echo 1 > \(root)/kernel/kho/active"])
      #expect(write.output.contains("Permission denied"))
      #expect(!kho.active.value)
    }
    // Without it, the kernel refuses any other user outright.
    try withMount(kho.tree) { _, root in
      let refused = run(setpriv + ["/bin/cat", root + "/kernel/kexec_loaded"])
      #expect(refused.status != 0)
      #expect(refused.output.contains("Permission denied"))
    }
  }

  @Test func aStaleMountIsRecovered() throws {
    let directory = makeTemporaryDirectory()
    defer { rmdir(directory) }
    let killed = try ControlMount.mount(at: directory, tree: ToyKHO().tree)
    killed.abandon()
    var info = stat()
    #expect(errnoOf(Int(stat(directory, &info))) == ENOTCONN)
    let mount = try ControlMount.mount(at: directory, tree: ToyKHO().tree)
    defer { try? mount.unmount() }
    #expect(readText(directory + "/kernel/kho/active") == "0\n")
  }

  @Test func aFailedReadOfDevFuseIsATypedErrorAndLeavesNothingMounted() throws {
    let directory = makeTemporaryDirectory()
    defer { rmdir(directory) }
    // The first read of /dev/fuse is FUSE_INIT's, on the mounting thread.
    SystemCallFaults.withFault(.init("read", .ioError, count: 1)) {
      #expect(throws: ControlMountError.system(SystemCallError("read", .ioError))) {
        try ControlMount.mount(at: directory, tree: ToyKHO().tree)
      }
    }
    // Nothing is left mounted there: a new mount serves.
    let mount = try ControlMount.mount(at: directory, tree: ToyKHO().tree)
    defer { try? mount.unmount() }
    #expect(readText(directory + "/kernel/kho/active") == "0\n")
    #expect(mount.servingError == nil)
  }

  @Test func aFailedThreadStartIsATypedError() throws {
    let directory = makeTemporaryDirectory()
    defer { rmdir(directory) }
    SystemCallFaults.withFault(.init("pthread_create", .tryAgain)) {
      #expect(throws: ControlMountError.system(SystemCallError("pthread_create", .tryAgain))) {
        try ControlMount.mount(at: directory, tree: ToyKHO().tree)
      }
    }
    let mount = try ControlMount.mount(at: directory, tree: ToyKHO().tree)
    defer { try? mount.unmount() }
    #expect(readText(directory + "/kernel/kho/active") == "0\n")
  }

  @Test func mountsThroughFusermount() throws {
    try withMount(ToyKHO().tree, options: .init(method: .fusermount)) { mount, root in
      #expect(readText(root + "/kernel/kho/active") == "0\n")
      #expect(mount.negotiated.maxWrite > 4096)
      #expect(writeFile(root + "/kernel/kho/active", [UInt8](repeating: 49, count: 5000)) == E2BIG)
    }
  }

  @Test func theNextImageAdoptsTheConnection() throws {
    var next = ToyKHO()
    next.tag = "0x2000"
    try withMount(ToyKHO().tree) { first, root in
      let scratch = root + "/kernel/kho/scratch_len"
      #expect(readText(scratch) == "0x1000\n")
      let fd = first.detach()
      // A reader arriving while nobody serves waits in the kernel's queue.
      let reader = try BackgroundCall { readText(scratch) }
      sleep(milliseconds: 300)
      #expect(!reader.isDone)
      let state = try ControlConnectionState(encoded: first.negotiated.encoded)
      let second = try ControlMount.adopt(
        fd: fd, negotiated: state, tree: next.tree)
      #expect(reader.join() == "0x2000\n")
      #expect(readText(scratch) == "0x2000\n")
      #expect(writeFile(root + "/kernel/kho/active", "1\n") == 0)
      #expect(next.active.value)
      try second.unmount()
    }
  }

  @Test func anInPlaceExecHandsItsWriteToTheNextImage() throws {
    let handedOver = Shared<ControlConnectionState?>(nil)
    let tree = ControlTree([
      "kernel/kexec/execute": .trigger { _ in
        // Stands for execve: the state goes to the next image, and this
        // handler never replies.
        handedOver.value = ControlMount.current?.prepareHandover(forwardingCurrentWrite: true)
      },
      "kernel/kexec_loaded": .attribute(mode: 0o444) { Array("1\n".utf8) },
    ])
    try withMount(tree) { first, root in
      let writer = try BackgroundCall { writeFile(root + "/kernel/kexec/execute", "1\n") }
      while handedOver.value == nil { sleep(milliseconds: 10) }
      let fd = first.detach()
      sleep(milliseconds: 200)
      #expect(!writer.isDone)
      let state = try #require(handedOver.value)
      #expect(state.pendingWrite?.size == 2)
      let second = try ControlMount.adopt(
        fd: fd, negotiated: try ControlConnectionState(encoded: state.encoded),
        tree: tree)
      #expect(writer.join() == 0)
      #expect(readText(root + "/kernel/kexec_loaded") == "1\n")
      try second.unmount()
    }
  }

  @Test func anOverlappedHandoverRepliesOnceTheNextImageServes() throws {
    var nextKHO = ToyKHO()
    nextKHO.tag = "0x2000"
    let nextTree = nextKHO.tree
    let second = Shared<ControlMount?>(nil)
    let tree = ControlTree([
      "kernel/kexec/execute": .trigger { _ throws(Errno) in
        let first = ControlMount.current!
        // The next image, spawned while this handler waits, adopts the
        // connection and answers what arrives meanwhile.
        second.value = try? ControlMount.adopt(
          fd: first.fileDescriptor, negotiated: first.prepareHandover(), tree: nextTree)
        let scratch = first.mountPoint + "/kernel/kho/scratch_len"
        guard readText(scratch) == "0x2000\n" else { throw Errno(rawValue: EIO) }
        // Ready: reply to the writer, then read no more.
        first.stop()
      },
      "kernel/kho/scratch_len": .attribute(mode: 0o400) { Array("0x1000\n".utf8) },
    ])
    try withMount(tree) { first, root in
      #expect(writeFile(root + "/kernel/kexec/execute", "1\n") == 0)
      _ = first.detach()
      let next = try #require(second.value)
      #expect(readText(root + "/kernel/kho/scratch_len") == "0x2000\n")
      try next.unmount()
    }
  }

  @Test func aFailedExecRepliesWithItsErrorAndKeepsServing() throws {
    let tree = ControlTree([
      "execute": .trigger { _ throws(Errno) in
        _ = ControlMount.current?.prepareHandover(forwardingCurrentWrite: true)
        throw Errno(rawValue: ENOEXEC)
      }
    ])
    try withMount(tree) { _, root in
      #expect(writeFile(root + "/execute", "1\n") == ENOEXEC)
      #expect(writeFile(root + "/execute", "1\n") == ENOEXEC)
    }
  }
}
