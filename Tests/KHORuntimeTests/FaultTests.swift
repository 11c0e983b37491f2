import KHO
import KHORuntime
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// Error paths of the core and the runtime, reached through the fault hook:
/// each failure reaches the caller typed, and what was serving goes on.
@Suite(.serialized) struct FaultTests {
  let options = KHOOptions(arenaSize: 8 << 20, scratchSize: 1 << 20)

  @Test func aFailedMemfdCreateIsABootError() {
    SystemCallFaults.withFault(.init("memfd_create", .noMemory)) {
      #expect(
        throws: KHOBootError.arena(.system(SystemCallError("memfd_create", .noMemory)))
      ) { try KHO.boot(options) }
    }
  }

  @Test func aFailedMmapIsABootError() {
    SystemCallFaults.withFault(.init("mmap", .noMemory)) {
      #expect(throws: KHOBootError.arena(.system(SystemCallError("mmap", .noMemory)))) {
        try KHO.boot(options)
      }
    }
  }

  @Test func aFailedSpawnRollsBackAndKeepsServing() throws {
    let runtime = try HandoverRuntime.boot(options)
    try runtime.kho.outgoing.serialize()
    SystemCallFaults.withFault(.init("posix_spawn", .tryAgain)) {
      #expect(throws: HandoverFailure.self) {
        _ = try runtime.handover(to: NextImage(path: "/bin/true"), mode: .overlapped())
      }
    }
    #expect(!runtime.kho.outgoing.isActive)
    #expect(!runtime.kho.outgoing.isFrozen)
    // The state is the service's again: it may change, and hand over later.
    try runtime.kho.outgoing.withMutation {}
  }

  @Test func aFailedExecInPlaceRollsBackAndKeepsServing() throws {
    let runtime = try HandoverRuntime.boot(options)
    var failure: HandoverFailure?
    SystemCallFaults.withFault(.init("execve", .permissionDenied)) {
      do throws(HandoverFailure) {
        _ = try runtime.handover(to: NextImage(path: "/bin/true"), mode: .inPlace)
      } catch {
        failure = error
      }
    }
    guard case .launch(let error) = failure else {
      Issue.record("expected a launch failure, got \(String(describing: failure))")
      return
    }
    #expect(error.errno == .permissionDenied)
    #expect(error.function.hasPrefix("execve"))
    #expect(!runtime.kho.outgoing.isActive)
    #expect(!runtime.kho.outgoing.isFrozen)
    // The arena fd is close-on-exec again after the failed exec.
    #expect(try runtime.kho.arena.fd.isCloseOnExec())
  }

  @Test func aFailedCommitSendRollsBack() throws {
    // The successor reports ready (bash writing READY to its fd), then
    // the commit's sendmsg fails: the handover aborts, nothing frozen.
    let runtime = try HandoverRuntime.boot(options)
    let script = "printf 'READY\\n' >&$KHO_READY_FD; exec sleep 5"
    var failure: HandoverFailure?
    SystemCallFaults.withFault(.init("sendmsg", .brokenPipe)) {
      do throws(HandoverFailure) {
        _ = try runtime.handover(
          to: NextImage(path: "/bin/bash", arguments: ["bash", "-c", script]), mode: .overlapped())
      } catch { failure = error }
    }
    guard case .successorFailed(_, let reason) = failure else {
      Issue.record("expected successorFailed, got \(String(describing: failure))")
      return
    }
    #expect(reason.contains("commit"))
    #expect(!runtime.kho.outgoing.isActive)
    #expect(!runtime.kho.outgoing.isFrozen)
  }
}
