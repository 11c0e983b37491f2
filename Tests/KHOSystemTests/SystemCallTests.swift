import KHOSystem
import Testing

#if canImport(Glibc)
  import Glibc
#endif

@Suite struct SystemCallTests {
  @Test func retriesOnEINTR() throws {
    var calls = 0
    let value = try systemCall("fake") { () -> Int in
      calls += 1
      if calls < 3 {
        errno = EINTR
        return -1
      }
      return calls
    }.get()
    #expect(value == 3)
  }

  @Test func reportsOtherErrnosAtOnce() {
    var calls = 0
    let result = systemCall("fake") { () -> Int in
      calls += 1
      errno = ENOMEM
      return -1
    }
    #expect(calls == 1)
    #expect(throws: SystemCallError("fake", .noMemory)) { try result.get() }
  }

  @Test func noRetryWhenNotAsked() {
    let result = systemCall("close", retryOnInterrupt: false) { () -> Int in
      errno = EINTR
      return -1
    }
    #expect(throws: SystemCallError("close", .interrupted)) { try result.get() }
  }

  @Test func errnoReadsAsAPersonExpects() {
    #expect(Errno.invalidArgument.description == "EINVAL (Invalid argument)")
    #expect(
      SystemCallError("memfd_create", .noMemory).description
        == "memfd_create: Cannot allocate memory (ENOMEM)")
    #expect(Errno(name: "EACCES") == .permissionDenied)
    #expect(Errno(name: "13") == .permissionDenied)
    #expect(Errno(name: "ENOTANERRNO") == nil)
    #expect(Errno(rawValue: 4095).name == "errno 4095")
  }
}

@Suite struct SystemCallFaultTests {
  @Test func parsesTheVariable() {
    let fault = SystemCallFaults.Fault(parsing: "execve:EACCES")
    #expect(fault == SystemCallFaults.Fault("execve", .permissionDenied))
    #expect(
      SystemCallFaults.Fault(parsing: "sendmsg:EPIPE:1:2")
        == SystemCallFaults.Fault("sendmsg", .brokenPipe, skip: 1, count: 2))
    for bad in ["", "execve", "execve:", ":EACCES", "execve:EWHAT", "execve:EACCES:x", "a:EIO:0:0"]
    {
      #expect(SystemCallFaults.Fault(parsing: bad) == nil, "\(bad)")
    }
  }

  @Test func failsTheNamedCallOnlyInItsScope() throws {
    let fault = SystemCallFaults.Fault("memfd_create", .noMemory)
    SystemCallFaults.withFault(fault) {
      #expect(throws: SystemCallError("memfd_create", .noMemory)) {
        try FileDescriptor.memfdCreate(name: "kho-fault", flags: .closeOnExec)
      }
      // Other calls go through.
      #expect((try? FileDescriptor.pipe()) != nil)
    }
    let fd = try FileDescriptor.memfdCreate(name: "kho-fault", flags: .closeOnExec)
    try fd.close()
  }

  @Test func skipsThenFailsCountTimes() throws {
    let fault = SystemCallFaults.Fault("pipe2", .tooManyOpenFiles, skip: 1, count: 1)
    try SystemCallFaults.withFault(fault) {
      let first = try FileDescriptor.pipe()
      #expect(throws: SystemCallError("pipe2", .tooManyOpenFiles)) { try FileDescriptor.pipe() }
      let third = try FileDescriptor.pipe()
      for fd in [first.read, first.write, third.read, third.write] { try fd.close() }
    }
  }

  @Test func otherThreadsAreNotTouched() throws {
    let fault = SystemCallFaults.Fault("pipe2", .tooManyOpenFiles)
    let outcome = Outcome()
    try SystemCallFaults.withFault(fault) {
      // A plain pthread not started through SystemThread: out of scope.
      var thread = pthread_t()
      let box = Unmanaged.passRetained(outcome).toOpaque()
      #expect(
        pthread_create(
          &thread, nil,
          { raw in
            let outcome = Unmanaged<Outcome>.fromOpaque(raw!).takeRetainedValue()
            outcome.succeeded = (try? FileDescriptor.pipe()) != nil
            return nil
          }, box) == 0)
      pthread_join(thread, nil)
    }
    #expect(outcome.succeeded)
  }

  @Test func threadsStartedInScopeInheritIt() throws {
    let fault = SystemCallFaults.Fault("pipe2", .tooManyOpenFiles)
    let outcome = Outcome()
    try SystemCallFaults.withFault(fault) {
      let thread = try SystemThread.joinable(name: "kho-test") {
        do throws(SystemCallError) { _ = try FileDescriptor.pipe() } catch { outcome.error = error }
      }
      thread.join()
    }
    #expect(outcome.error == SystemCallError("pipe2", .tooManyOpenFiles))
  }

  @Test func mmapFailsTyped() {
    SystemCallFaults.withFault(.init("mmap", .noMemory)) {
      #expect(throws: SystemCallError("mmap", .noMemory)) {
        try MemoryMapping.mapAnonymous(length: 4096)
      }
    }
  }

  @Test func execveFailsAndReturns() {
    // The hook fails execve before the kernel sees it: this process stays.
    SystemCallFaults.withFault(.init("execve", .permissionDenied)) {
      let error = ProcessOperations.exec(path: "/bin/true", arguments: ["true"], environment: [])
      #expect(error == SystemCallError("execve", .permissionDenied))
    }
  }

  @Test func posixSpawnFailsTyped() {
    SystemCallFaults.withFault(.init("posix_spawn", .tryAgain)) {
      #expect(throws: SystemCallError("posix_spawn", .tryAgain)) {
        try ProcessOperations.spawn(
          path: "/bin/true", arguments: ["true"], environment: [], inheriting: [])
      }
    }
  }

  @Test func sendmsgFailsTyped() throws {
    let (a, b) = try FileDescriptor.socketPair()
    defer {
      a.closeIgnoringErrors()
      b.closeIgnoringErrors()
    }
    SystemCallFaults.withFault(.init("sendmsg", .brokenPipe)) {
      #expect(throws: SystemCallError("sendmsg", .brokenPipe)) {
        try a.sendMessage(Array("GO\n".utf8))
      }
    }
    #expect(try a.sendMessage(Array("GO\n".utf8)) == 3)
    #expect(try b.read(upTo: 16) == Array("GO\n".utf8))
  }

  @Test func pthreadCreateFailsAndTheBodyNeverRuns() {
    let outcome = Outcome()
    SystemCallFaults.withFault(.init("pthread_create", .tryAgain)) {
      #expect(throws: SystemCallError("pthread_create", .tryAgain)) {
        try SystemThread.detached(name: "kho-never") { outcome.succeeded = true }
      }
    }
    #expect(!outcome.succeeded)
  }
}

@Suite struct DescriptorPassingTests {
  @Test func descriptorsTravelInBatchesAndExtrasAreClosed() throws {
    let (a, b) = try FileDescriptor.socketPair()
    defer {
      a.closeIgnoringErrors()
      b.closeIgnoringErrors()
    }
    let pipes = try (0..<FileDescriptor.maxDescriptorsPerMessage).map { _ in
      try FileDescriptor.pipe()
    }
    defer {
      for pipe in pipes {
        pipe.read.closeIgnoringErrors()
        pipe.write.closeIgnoringErrors()
      }
    }
    #expect(try a.sendMessage([7], descriptors: pipes.map(\.read)) == 1)
    var byte: UInt8 = 0
    let message = try withUnsafeMutableBytes(of: &byte) { buffer in
      try b.receiveMessage(into: buffer, maxDescriptors: 3)
    }
    #expect(byte == 7)
    #expect(message.descriptors.count == 3)
    #expect(message.descriptorsTruncated)
    for fd in message.descriptors { try fd.close() }
    // One too many for the kernel is refused before sendmsg.
    let tooMany = Array(
      repeating: pipes[0].read, count: FileDescriptor.maxDescriptorsPerMessage + 1)
    #expect(throws: SystemCallError("sendmsg", .invalidArgument)) {
      try a.sendMessage([1], descriptors: tooMany)
    }
  }
}

/// Written by one thread, read by the test after that thread ended.
private final class Outcome: @unchecked Sendable {
  var succeeded = false
  var error: SystemCallError?
}
