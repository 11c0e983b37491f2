import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// Makes wrapped system calls fail with a chosen errno, so that error paths
/// are tested: the mocking hook of swift-system's `Internals/Mocking.swift`,
/// kept in release builds because it costs one relaxed atomic load per call
/// while nothing is injected.
///
/// A fault names the C function as the wrappers do (`"memfd_create"`,
/// `"mmap"`, `"execve"`, `"posix_spawn"`, `"sendmsg"`, `"read"`,
/// `"pthread_create"`...), the errno to fail with, how many matching calls
/// to let through first, and how many to fail.
///
/// In a test, ``withFault(_:_:)`` fails the calls made by the calling thread
/// and by the threads it starts with ``SystemThread`` while its body runs,
/// so that tests running in parallel on other threads are not touched:
///
/// ```swift
/// let fault = SystemCallFaults.Fault("memfd_create", .noMemory)
/// SystemCallFaults.withFault(fault) {
///   #expect(throws: SystemCallError("memfd_create", .noMemory)) {
///     try FileDescriptor.memfdCreate(name: "x", flags: .closeOnExec)
///   }
/// }
/// ```
///
/// A whole process under test is armed with ``injectProcessWide(_:)``,
/// which the handover runtime calls for the faults its
/// `KHO_FAULT_SYSCALL` variable names.
public enum SystemCallFaults {
  /// One injected failure.
  public struct Fault: Sendable, Hashable, CustomStringConvertible {
    /// The C function, as wrappers name it (`"execve"`).
    public var function: String
    /// What the call fails with.
    public var errno: Errno
    /// Matching calls that succeed before the first failure.
    public var skip: Int
    /// Matching calls that fail after those; `Int.max`: all of them.
    public var count: Int

    /// A fault failing `function` with `errno` after `skip` calls, `count`
    /// times.
    public init(_ function: String, _ errno: Errno, skip: Int = 0, count: Int = .max) {
      self.function = function
      self.errno = errno
      self.skip = max(0, skip)
      self.count = max(0, count)
    }

    /// Parses `FUNCTION:ERRNO[:SKIP[:COUNT]]`, for example `execve:EACCES`
    /// or `sendmsg:EPIPE:1:1`; ERRNO is a name or a number.
    public init?(parsing spec: some StringProtocol) {
      let fields = String(spec).split(separator: Character(":"), omittingEmptySubsequences: false)
        .map(String.init)
      guard (2...4).contains(fields.count), !fields[0].isEmpty,
        let errno = Errno(name: fields[1])
      else { return nil }
      let skip = fields.count > 2 ? Int(fields[2]) : 0
      let count = fields.count > 3 ? Int(fields[3]) : Int.max
      guard let skip, let count, skip >= 0, count > 0 else { return nil }
      self.init(fields[0], errno, skip: skip, count: count)
    }

    public var description: String {
      "\(function):\(errno.name)" + (skip > 0 || count != .max ? ":\(skip)" : "")
        + (count != .max ? ":\(count)" : "")
    }
  }

  /// Fails the calls `fault` names, made on this thread or on threads it
  /// starts through ``SystemThread``, while `body` runs.
  public static func withFault<R, E: Error>(
    _ fault: Fault, _ body: () throws(E) -> R
  ) throws(E) -> R {
    let plan = Plan(fault, thread: pthread_self())
    register(plan)
    defer { unregister(plan) }
    return try body()
  }

  /// Fails the calls `fault` names on every thread of the process, from now
  /// on.
  public static func injectProcessWide(_ fault: Fault) {
    register(Plan(fault, thread: nil))
  }

  /// How many calls each fault of this thread's scope has failed so far.
  public static func failures(of function: String) -> Int {
    plans.withLock { plans in
      plans.filter { $0.fault.function == function }.reduce(0) { $0 + $1.failed }
    }
  }

  // MARK: - Internals

  final class Plan: @unchecked Sendable {
    // Mutated only under `plans`' lock.
    let fault: Fault
    var threads: [pthread_t]?
    var seen = 0
    var failed = 0

    init(_ fault: Fault, thread: pthread_t?) {
      self.fault = fault
      self.threads = thread.map { [$0] }
    }

    func covers(_ thread: pthread_t) -> Bool {
      guard let threads else { return true }
      return threads.contains { pthread_equal($0, thread) != 0 }
    }
  }

  private static let armed = Atomic<Int>(0)
  private static let plans = Mutex<[Plan]>([])

  private static func register(_ plan: Plan) {
    plans.withLock { $0.append(plan) }
    armed.add(1, ordering: .releasing)
  }

  private static func unregister(_ plan: Plan) {
    plans.withLock { $0.removeAll { $0 === plan } }
    armed.subtract(1, ordering: .releasing)
  }

  /// The errno a call of `function` is to fail with now, if any.
  @inline(__always)
  static func injected(_ function: String) -> Errno? {
    guard armed.load(ordering: .acquiring) > 0 else { return nil }
    return slowInjected(function)
  }

  @inline(never)
  private static func slowInjected(_ function: String) -> Errno? {
    let thread = pthread_self()
    return plans.withLock { plans -> Errno? in
      for plan in plans where plan.fault.function == function && plan.covers(thread) {
        plan.seen += 1
        if plan.seen > plan.fault.skip && plan.failed < plan.fault.count {
          plan.failed += 1
          return plan.fault.errno
        }
      }
      return nil
    }
  }

  /// The thread-scoped plans that cover the calling thread, for a thread
  /// it is about to start (``SystemThread`` passes them on).
  static func inheritable() -> [Plan] {
    guard armed.load(ordering: .acquiring) > 0 else { return [] }
    let parent = pthread_self()
    return plans.withLock { plans in plans.filter { $0.threads != nil && $0.covers(parent) } }
  }

  /// Puts the calling thread, just started, into the scope of `inherited`.
  static func adopt(_ inherited: [Plan]) {
    guard !inherited.isEmpty else { return }
    let child = pthread_self()
    plans.withLock { _ in
      for plan in inherited { plan.threads?.append(child) }
    }
  }
}
