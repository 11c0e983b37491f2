import KHO
import Metrics

/// The handover's figures through swift-metrics, for services that export
/// them (with swift-prometheus: bootstrap `MetricsSystem` with a
/// `PrometheusMetricsFactory` and serve its registry's `emit(into:)` on
/// `/metrics`). Without a bootstrapped backend they cost nothing.
///
/// | metric | kind | what |
/// |---|---|---|
/// | `kho_handovers_total` | counter | handovers this image started that succeeded |
/// | `kho_handover_failures_total` | counter | handovers that failed and rolled back |
/// | `kho_handover_duration_seconds` | timer | from the start of a handover to its commit (overlapped) |
/// | `kho_generation` | gauge | handovers since the last cold start |
/// | `kho_arena_bytes` | gauge | the arena's size |
/// | `kho_boot_incoming_bytes` | gauge | the preserved bytes this image took over at boot |
/// | `kho_boot_kind` | gauge | 0 cold, 1 handover, 2 crash |
/// | `kho_cold_starts_refused_total` | counter | boots that refused a handover and started cold |
///
/// A service adds its own figures beside these (items, evictions, damage
/// found), with ``recordStore(items:bytes:evictions:damaged:)``.
public struct HandoverMetrics: Sendable {
  private let kho: KHO
  private let handovers = Counter(label: "kho_handovers_total")
  private let failures = Counter(label: "kho_handover_failures_total")
  private let duration = Metrics.Timer(label: "kho_handover_duration_seconds")
  private let generation = Gauge(label: "kho_generation")
  private let arenaBytes = Gauge(label: "kho_arena_bytes")
  private let incomingBytes = Gauge(label: "kho_boot_incoming_bytes")
  private let bootKind = Gauge(label: "kho_boot_kind")
  private let refused = Counter(label: "kho_cold_starts_refused_total")
  private let items = Gauge(label: "kho_store_items")
  private let storeBytes = Gauge(label: "kho_store_bytes")
  private let evictions = Gauge(label: "kho_store_evictions")
  private let damaged = Gauge(label: "kho_store_damaged")

  /// Metrics of `kho`.
  public init(kho: KHO) { self.kho = kho }

  /// The figures of the boot: generation, arena, what was taken over.
  public func recordBoot() {
    generation.record(Int64(kho.generation))
    arenaBytes.record(Int64(kho.arena.size))
    switch kho.incoming?.kind {
    case .handover?: bootKind.record(1)
    case .crash?: bootKind.record(2)
    case nil: bootKind.record(0)
    }
    incomingBytes.record(Int64(kho.incoming?.memCache.totalBytes ?? 0))
    if kho.coldStartReason != nil { refused.increment() }
  }

  /// A handover that committed after `elapsed`.
  public func recordHandover(_ elapsed: Duration) {
    handovers.increment()
    let (seconds, attoseconds) = elapsed.components
    duration.recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
  }

  /// A handover that failed and rolled back.
  public func recordFailure() { failures.increment() }

  /// A store's own figures (kho-cache's `stats` has the same).
  public func recordStore(items: Int, bytes: Int, evictions: Int, damaged: Int) {
    self.items.record(Int64(items))
    storeBytes.record(Int64(bytes))
    self.evictions.record(Int64(evictions))
    self.damaged.record(Int64(damaged))
  }
}
