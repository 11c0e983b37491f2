import KHOSystem
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// A switch for crash tests, documented as for tests only: with
/// `KHO_CRASH_AT=POINT[:N]` in the environment, the process kills itself
/// with SIGKILL (exactly what `kill -9` does) the N-th time (default the
/// first) it reaches POINT. Without the variable, ``reach(_:)`` is one
/// comparison.
///
/// The runtime's points: ``afterDump`` (KHO active, nothing frozen yet),
/// ``afterFreeze`` (right before the exec in place, or before the commit of
/// an overlapped handover), ``afterExec`` (a next image, at boot). A
/// subsystem names its own: kho-cache passes `mid-set` and `mid-eviction`
/// from its store.
///
/// ```sh
/// KHO_CRASH_AT=mid-set:100 kho run -- kho-cache ...   # dies in its 100th set
/// ```
public enum FaultInjection {
  /// The variable.
  public static let environmentName = "KHO_CRASH_AT"
  /// After DUMP, before the handover is loaded.
  public static let afterDump = "after-dump"
  /// After FREEZE, before the exec or the commit.
  public static let afterFreeze = "after-freeze"
  /// In the next image, once it booted from the handover.
  public static let afterExec = "after-exec"

  private final class Armed: Sendable {
    let point: String
    let remaining: Atomic<Int>
    init(point: String, count: Int) {
      self.point = point
      self.remaining = Atomic(count)
    }
  }

  private static let armed: Armed? = {
    guard let value = Environment.value(of: environmentName), !value.isEmpty else { return nil }
    let parts = value.split(separator: ":", maxSplits: 1)
    let count = parts.count == 2 ? Int(parts[1]) ?? 1 : 1
    return Armed(point: String(parts[0]), count: max(1, count))
  }()

  /// Whether the switch names a point at all.
  public static var isArmed: Bool { armed != nil }

  /// Kills this process with SIGKILL if `point` is the one armed and this
  /// is its N-th time.
  public static func reach(_ point: String) {
    guard let armed, armed.point == point else { return }
    if armed.remaining.wrappingSubtract(1, ordering: .relaxed).newValue == 0 {
      fflush(nil)
      kill(getpid(), SIGKILL)
    }
  }
}
