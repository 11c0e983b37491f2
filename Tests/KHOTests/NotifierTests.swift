import FDT
import Synchronization
import Testing

@testable import KHO

/// Records the order in which blocks are called.
final class CallLog: Sendable {
  private let entries = Mutex<[String]>([])
  func append(_ s: String) { entries.withLock { $0.append(s) } }
  var all: [String] { entries.withLock { $0 } }
}

@Suite struct NotifierTests {
  @Test func resultCodes() {
    #expect(NotifierResult.done.rawValue == 0)
    #expect(NotifierResult.ok.rawValue == 1)
    #expect(NotifierResult.stopMask.rawValue == 0x8000)
    #expect(NotifierResult.bad.rawValue == 0x8002)
    #expect(NotifierResult.stop.rawValue == 0x8001)
  }

  @Test(arguments: [Int32(-1), -12, -22, -28, -16, -4095])
  func errnoRoundTrip(err: Int32) {
    let result = NotifierResult(errno: err)
    #expect(result.rawValue == 0x8000 | (1 - err))
    #expect(result.stopsChain)
    #expect(result.errno == err)
  }

  @Test func errnoEncodingMatchesKernel() {
    #expect(NotifierResult(errno: 0) == .ok)
    #expect(NotifierResult(errno: -12).rawValue == 0x800d)
    #expect(NotifierResult.done.errno == 0)
    #expect(NotifierResult.ok.errno == 0)
    #expect(NotifierResult.stop.errno == 0)
    // NOTIFY_BAD decodes as -1 (EPERM), as notifier_to_errno does.
    #expect(NotifierResult.bad.errno == -1)
  }

  private func block(
    _ name: String, _ priority: Int32, _ log: CallLog, result: NotifierResult = .ok
  )
    -> NotifierBlock<Int, Int>
  {
    NotifierBlock(name: name, priority: priority) { _, data in
      log.append(name)
      data += 1
      return result
    }
  }

  @Test func priorityOrderAndEqualsInRegistrationOrder() throws {
    let log = CallLog()
    let chain = NotifierChain<Int, Int>()
    try chain.register(block("a0", 0, log))
    try chain.register(block("b10", 10, log))
    try chain.register(block("c0", 0, log))
    try chain.register(block("d-5", -5, log))
    try chain.register(block("e10", 10, log))
    #expect(chain.names == ["b10", "e10", "a0", "c0", "d-5"])
    var data = 0
    let result = chain.call(7, &data)
    #expect(result == .ok)
    #expect(data == 5)
    #expect(log.all == ["b10", "e10", "a0", "c0", "d-5"])
  }

  @Test func stopMaskStopsTheChain() throws {
    let log = CallLog()
    let chain = NotifierChain<Int, Int>()
    try chain.register(block("first", 3, log))
    try chain.register(block("stopper", 2, log, result: NotifierResult(errno: -12)))
    try chain.register(block("never", 1, log))
    var data = 0
    let result = chain.call(0, &data)
    #expect(result.errno == -12)
    #expect(log.all == ["first", "stopper"])
  }

  @Test func emptyChainIsDone() {
    var data = 0
    #expect(NotifierChain<Int, Int>().call(0, &data) == .done)
  }

  @Test func doubleRegisterAndUnknownUnregister() throws {
    let log = CallLog()
    let chain = NotifierChain<Int, Int>()
    let a = block("a", 0, log)
    try chain.register(a)
    #expect(throws: NotifierError.alreadyRegistered("a")) { try chain.register(a) }
    #expect(NotifierError.alreadyRegistered("a").errno == .fileExists)
    try chain.unregister(a)
    #expect(throws: NotifierError.notRegistered("a")) { try chain.unregister(a) }
    #expect(NotifierError.notRegistered("a").errno == .noSuchFile)
    #expect(chain.names.isEmpty)
  }

  @Test func khoNotifierMapsErrors() {
    let noSpace = KHONotifier(name: "full") { writer in
      throw FDTError(.noSpace, at: nil, "full")
    }
    let busy = KHONotifier(name: "busy") { _ in throw Errno.resourceBusy }
    let fine = KHONotifier(name: "fine") { writer in
      try writer.beginNode("x")
      try writer.endNode()
    }
    var writer: FDTWriter? = FDTWriter()
    try? writer!.beginNode("")
    #expect(noSpace.callback(.dump, &writer).errno == -28)
    #expect(busy.callback(.dump, &writer).errno == -16)
    #expect(fine.callback(.dump, &writer) == .ok)
    // FREEZE keeps a failed system call's errno, not EINVAL.
    let noMemory = KHONotifier(
      name: "memfd", dump: { _ in },
      freeze: { throw SystemCallError("memfd_create", .noMemory) })
    #expect(noMemory.callback(.freeze, &writer).errno == -12)
    let other = KHONotifier(name: "other", dump: { _ in }, freeze: { throw CancellationError() })
    #expect(other.callback(.freeze, &writer).errno == -22)
    var none: FDTWriter? = nil
    #expect(fine.callback(.abort, &none) == .done)
    #expect(fine.callback(.dump, &none).errno == -22)
  }
}
