import KHO
import KHOCacheServer
import KHORuntime
import KHOSystem
import Logging
import NIOCore

/// Handing every established client connection to the next image, with
/// what it had read and not parsed and what it had not yet written.
///
/// FREEZE (the last moment: right before `execve` in place, after the next
/// image reported itself prepared overlapped) freezes every connection,
/// takes its snapshot and a duplicate of its descriptor, and offers them to
/// the runtime: the snapshots in a memfd, the descriptors by SCM_RIGHTS.
/// UNFREEZE and ABORT (rollback) let every connection go on in this image.
enum ConnectionHandover {
  /// How long FREEZE waits for the replies a connection already handed to
  /// its socket to be written (a client that does not read holds them);
  /// a connection still holding some after it is closed.
  static let drainTimeout = TimeAmount.seconds(10)

  static func register(_ context: CacheServerContext, _ runtime: HandoverRuntime, logger: Logger)
    throws
  {
    try runtime.kho.outgoing.register(
      KHONotifier(
        name: "kho-cache-connections",
        dump: { _ in },
        abort: { context.connections.unfreezeAll() },
        freeze: { try freeze(context, runtime, logger: logger) },
        unfreeze: { context.connections.unfreezeAll() }))
  }

  private static func freeze(
    _ context: CacheServerContext, _ runtime: HandoverRuntime, logger: Logger
  ) throws {
    let started = ContinuousClock.now
    let taken: FrozenConnections
    do {
      taken = try context.connections.freezeAll(drainTimeout: drainTimeout)
    } catch {
      logger.error("kho-cache: cannot freeze the connections: \(error)")
      throw error
    }
    let frozen = ContinuousClock.now
    let blob: KHOSystem.FileDescriptor
    do {
      blob = try KHOSystem.FileDescriptor.memfdCreate(
        name: "kho-cache-connections", flags: .closeOnExec)
    } catch {
      logger.error("kho-cache: cannot hand the connections over: \(error)")
      throw error
    }
    do {
      try blob.writeAll(taken.records)
    } catch {
      logger.error("kho-cache: cannot write the connection records: \(error)")
      blob.closeIgnoringErrors()
      throw error
    }
    runtime.offer(DescriptorParcel(blob: blob, descriptors: taken.descriptors))
    logger.info(
      "kho-cache: handing over \(taken.descriptors.count) connections (frozen in \(frozen - started), records in \(ContinuousClock.now - frozen))"
    )
  }

  /// In the next image, once the predecessor let go: starts adopting the
  /// connections it handed over (all closed if their records are not
  /// readable), the most recently active first. Returns when every one is
  /// taken up (logged), or nil when there was nothing to adopt; the caller
  /// serves new connections meanwhile, and starts the next handover's
  /// controls only after it (a connection not yet taken up could not be
  /// handed over again).
  static func adopt(
    _ runtime: HandoverRuntime, group: any EventLoopGroup, context: CacheServerContext,
    logger: Logger
  ) -> EventLoopFuture<Void>? {
    guard let parcel = runtime.takeParcel() else { return nil }
    let started = ContinuousClock.now
    defer { parcel.blob.closeIgnoringErrors() }
    let maxCount = DescriptorParcel.maxDescriptors
    guard let bytes = readBlob(parcel.blob),
      let snapshots = ConnectionRecords.decode(bytes, maxCount: maxCount),
      snapshots.count == parcel.descriptors.count
    else {
      logger.error(
        "kho-cache: the handed-over connection records are malformed; closing \(parcel.descriptors.count) connections"
      )
      for fd in parcel.descriptors { fd.closeIgnoringErrors() }
      return nil
    }
    let (checked, adopted) = ConnectionAdoption.adopt(
      snapshots, descriptors: parcel.descriptors, group: group, context: context)
    return adopted.map { adopted in
      if adopted < snapshots.count {
        logger.warning(
          "kho-cache: adopted \(adopted) of \(snapshots.count) handed-over connections (\(snapshots.count - checked) failed the checks or -c)"
        )
      } else {
        logger.info(
          "kho-cache: adopted \(adopted) handed-over connections in \(ContinuousClock.now - started)"
        )
      }
    }
  }

  /// The records' bytes, bounded (a connection holds at most a few of its
  /// fields' limits; a blob past 64 GiB is refused).
  private static func readBlob(_ blob: KHOSystem.FileDescriptor) -> [UInt8]? {
    guard let size = try? blob.status().size, size >= 0, size <= 64 << 30 else { return nil }
    var bytes: [UInt8] = []
    bytes.reserveCapacity(Int(size))
    while bytes.count < Int(size) {
      guard
        let chunk = try? blob.read(
          upTo: min(1 << 24, Int(size) - bytes.count), at: Int64(bytes.count)),
        !chunk.isEmpty
      else { return nil }
      bytes += chunk
    }
    return bytes
  }
}
