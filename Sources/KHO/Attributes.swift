// The control ABI (ABI.md): the seed's /sys/kernel/kho files as a table of
// show/store pairs with the kernel's exact text and errno semantics, plus
// the kernfs layer around them (E2BIG, EACCES, reads by offset). A FUSE
// mount only forwards to ``KHOAttributes``.

import FDT
import KHOSystem
import Synchronization

/// One file of the control mount.
public struct KHOAttribute: Sendable {
  /// What the file holds.
  public enum Content: Sendable {
    /// A text attribute (`kobj_attribute`): `show` renders the whole
    /// content; `store`, when writable, receives one write's bytes.
    case text(
      show: @Sendable () -> [UInt8],
      store: (@Sendable ([UInt8]) throws(Errno) -> Void)?)
    /// A binary attribute (`bin_attribute`): `blob` returns the bytes, or
    /// `nil` when the file does not exist now.
    case binary(blob: @Sendable () -> [UInt8]?)
  }

  /// The path under the mount, for example `kernel/kho/active`.
  public let path: String
  /// The permission bits, as in sysfs (`0o600`, `0o400`).
  public let mode: UInt16
  /// The show/store pair or the blob.
  public let content: Content

  /// Creates an attribute.
  public init(path: String, mode: UInt16, content: Content) {
    self.path = path
    self.mode = mode
    self.content = content
  }
}

/// The control files of KHO, with sysfs semantics.
///
/// ```swift
/// let attributes = KHOAttributes(outgoing: kho)
/// try attributes.write("kernel/kho/active", Array("1\n".utf8))
/// let blob = try attributes.read("kernel/kho/dt", offset: 0, count: 1 << 20)
/// try attributes.read("kernel/kho/dt_max", offset: 0, count: 4096)  // "0xa00000\n"
/// ```
///
/// Every error is a `Errno` whose `rawValue` is what `write(2)` or
/// `read(2)` should fail with.
public final class KHOAttributes: Sendable {
  /// The largest write sysfs accepts (`PAGE_SIZE`): more is `E2BIG`.
  public static let maxWrite = 4096
  /// The size `stat` reports for a text attribute, as sysfs does.
  public static let textFileSize = 4096

  /// The paths of the files.
  public enum Path {
    /// `0600`: `"0\n"`/`"1\n"`; write to serialize or abort.
    public static let active = "kernel/kho/active"
    /// `0600`: the blob buffer size, `"0x%llx\n"`.
    public static let dtMax = "kernel/kho/dt_max"
    /// `0400`: the scratch region's length, `"0x%llx\n"`.
    public static let scratchLength = "kernel/kho/scratch_len"
    /// `0400`: the scratch region's arena offset, `"0x%llx\n"`.
    public static let scratchPhysical = "kernel/kho/scratch_phys"
    /// `0400`: the serialized blob, while active.
    public static let dt = "kernel/kho/dt"
    /// The incoming blob, after a KHO boot.
    public static let firmwareDT = "firmware/kho/dt"
  }

  /// The outgoing side the files act on.
  public let outgoing: KHOOutgoing
  private let incoming = Mutex<(@Sendable () -> [UInt8]?)?>(nil)

  /// Creates the files for `outgoing`.
  public init(outgoing: KHOOutgoing) {
    self.outgoing = outgoing
  }

  /// Gives `firmware/kho/dt` its content: `provider` returns the incoming
  /// blob, or `nil` (the file then does not exist). The incoming side calls
  /// this after a KHO boot.
  public func setIncomingBlob(_ provider: (@Sendable () -> [UInt8]?)?) {
    incoming.withLock { $0 = provider }
  }

  /// The table: every file with its mode and show/store pair.
  public var table: [KHOAttribute] {
    let kho = outgoing
    return [
      KHOAttribute(
        path: Path.active, mode: 0o600,
        content: .text(
          show: { Self.activeShow(kho) },
          store: { bytes throws(Errno) in try Self.activeStore(kho, bytes) })),
      KHOAttribute(
        path: Path.dtMax, mode: 0o600,
        content: .text(
          show: { Self.hexShow(kho.dtMax) },
          store: { bytes throws(Errno) in try Self.dtMaxStore(kho, bytes) })),
      KHOAttribute(
        path: Path.scratchLength, mode: 0o400,
        content: .text(show: { Self.hexShow(kho.scratch.length) }, store: nil)),
      KHOAttribute(
        path: Path.scratchPhysical, mode: 0o400,
        content: .text(show: { Self.hexShow(kho.scratch.lowerBound) }, store: nil)),
      KHOAttribute(path: Path.dt, mode: 0o400, content: .binary(blob: { kho.dt?.bytes })),
      KHOAttribute(
        path: Path.firmwareDT, mode: 0o400,
        content: .binary(blob: { [self] in self.incoming.withLock { $0 }?() })),
    ]
  }

  /// The attribute at `path`, if it exists now (`dt` only while active,
  /// `firmware/kho/dt` only after a KHO boot).
  public func attribute(_ path: String) -> KHOAttribute? {
    guard let attribute = table.first(where: { $0.path == path }) else { return nil }
    if case .binary(let blob) = attribute.content, blob() == nil { return nil }
    return attribute
  }

  /// The size `stat` reports: 4096 for text files, the blob's size for
  /// binary ones.
  ///
  /// - Throws: `Errno/noSuchFile`` when the file does not exist now.
  public func size(_ path: String) throws(Errno) -> Int {
    guard let attribute = attribute(path) else { throw .noSuchFile }
    switch attribute.content {
    case .text: return Self.textFileSize
    case .binary(let blob): return blob()?.count ?? 0
    }
  }

  /// `read(2)` at `offset`: up to `count` bytes; none at or past the end.
  ///
  /// - Throws: `Errno/noSuchFile`` when the file does not exist now.
  public func read(_ path: String, offset: UInt64, count: Int) throws(Errno) -> [UInt8] {
    guard let attribute = attribute(path) else { throw .noSuchFile }
    let bytes: [UInt8]
    switch attribute.content {
    case .text(let show, _): bytes = show()
    // The seed's raw_read copied `count` bytes from `pos` unchecked; here a
    // read past the end gives 0 bytes.
    case .binary(let blob): bytes = blob() ?? []
    }
    guard offset < UInt64(bytes.count), count > 0 else { return [] }
    let start = Int(offset)
    return Array(bytes[start..<min(bytes.count, start + min(count, bytes.count))])
  }

  /// `write(2)` of `bytes` (at offset 0; sysfs ignores the offset), as
  /// kernfs does it: `EACCES` for a read-only file, `E2BIG` above 4096
  /// bytes, nothing at all for 0 bytes, else the store.
  ///
  /// - Returns: the number of bytes consumed, all of them.
  /// - Throws: the errno the writer should see.
  @discardableResult
  public func write(_ path: String, _ bytes: [UInt8]) throws(Errno) -> Int {
    guard let attribute = attribute(path) else { throw .noSuchFile }
    guard case .text(_, let store?) = attribute.content else { throw .permissionDenied }
    guard bytes.count <= Self.maxWrite else { throw .argumentListTooLong }
    // sysfs_kf_write returns 0 for an empty write without calling store.
    guard !bytes.isEmpty else { return 0 }
    try store(bytes)
    return bytes.count
  }

  // MARK: show/store pairs

  /// `active_show`: `"0\n"` or `"1\n"`.
  public static func activeShow(_ kho: KHOOutgoing) -> [UInt8] {
    Array((kho.isActiveSettled ? "1\n" : "0\n").utf8)
  }

  /// `active_store`: kstrtobool, else EINVAL; no scratch: ENOMEM (for 0
  /// and 1 alike); same state: nothing; 1: serialize (failure: EINVAL,
  /// inactive); 0: abort.
  public static func activeStore(_ kho: KHOOutgoing, _ bytes: [UInt8]) throws(Errno) {
    let value = try KernelParsing.kstrtobool(bytes: bytes)
    if kho.scratch.isEmpty { throw .noMemory }
    if value {
      do {
        try kho.serialize()
      } catch .alreadyActive {
        // The seed compares under its lock and does nothing: same here.
      } catch {
        throw .invalidArgument
      }
    } else {
      kho.abort()
    }
  }

  /// `dt_max_store`: kstrtoull base 0, any error EINVAL; EBUSY while active
  /// (the seed wrote it unlocked, even while active).
  public static func dtMaxStore(_ kho: KHOOutgoing, _ bytes: [UInt8]) throws(Errno) {
    let value: UInt64
    do { value = try KernelParsing.kstrtoull(bytes: bytes, base: 0) } catch {
      throw .invalidArgument
    }
    try kho.setDTMax(value)
  }

  /// `sysfs_emit(buf, "0x%llx\n", value)`.
  public static func hexShow(_ value: UInt64) -> [UInt8] {
    Array("0x\(String(value, radix: 16))\n".utf8)
  }
}
