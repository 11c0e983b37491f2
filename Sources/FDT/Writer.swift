/// A sequential writer of flattened device trees, with the capabilities of
/// libfdt's `fdt_sw` (`fdt_create` ... `fdt_finish`).
///
/// Nodes are opened and closed in order; properties belong to the node
/// opened last. Misuse is a typed error, never a trap.
///
/// ```swift
/// var writer = FDTWriter()
/// try writer.addReservation(address: 0x1000, size: 0x2000)
/// try writer.beginNode("")
/// try writer.property("compatible", string: "kho-v1")
/// try writer.beginNode("cache")
/// try writer.property("mem", native: [UInt64(0x200000), 0x400000])
/// try writer.endNode()
/// try writer.endNode()
/// let blob: [UInt8] = try writer.finish()
/// ```
///
/// The output is byte-identical to its reference for every tree:
/// ``Layout/libfdt`` to libfdt's sequential writer (and so pylibfdt's
/// `FdtSw`), ``Layout/dtc`` to `dtc -I dtb -O dtb`.
public struct FDTWriter: Sendable {
  /// Where the blocks go and in which order the strings are stored.
  public enum Layout: String, Sendable, CaseIterable {
    /// libfdt's sequential writer: reservation map at 48, strings newest
    /// first.
    case libfdt
    /// dtc: reservation map at 40, strings in first-use order.
    case dtc

    var reservationOffset: Int { self == .libfdt ? 48 : 40 }
  }

  private enum State: Sendable {
    case reservations
    case structure(depth: Int, rootClosed: Bool)
    case finished
  }

  /// Where the blocks go: libfdt's order or dtc's.
  public let layout: Layout
  /// The largest blob this writer may produce, or `nil` to grow freely.
  /// Exceeding it throws ``FDTError/Kind/noSpace``, as libfdt's `dt_max`.
  public let capacity: Int?
  /// The boot CPU's physical ID, written to the header.
  public var bootCPUID: UInt32 = 0

  private var state = State.reservations
  private var reservations: [MemoryReservation] = []
  private var structure: [UInt8] = []
  private var strings: StringTable
  /// Offsets in `structure` of name offsets to fix up at `finish`, for
  /// libfdt's newest-first table whose final offsets are known only then.
  private var nameOffsetFixups: [Int] = []

  /// Creates a writer.
  ///
  /// - Parameters:
  ///   - layout: the reference whose bytes to produce.
  ///   - capacity: the largest total size allowed, or `nil` for no limit.
  public init(layout: Layout = .libfdt, capacity: Int? = nil) {
    self.layout = layout
    self.capacity = capacity
    self.strings = StringTable(newestFirst: layout == .libfdt)
    structure.reserveCapacity(min(capacity ?? 4096, 1 << 20))
  }

  /// The size the blob would have if finished now.
  public var size: Int {
    // FDT_END is counted before `finish` appends it.
    var endToken = 4
    if case .finished = state { endToken = 0 }
    return layout.reservationOffset + (reservations.count + 1) * FDTFormat.reservationEntrySize
      + structure.count + endToken + strings.size
  }

  private func checkSpace() throws(FDTError) {
    if let capacity, size > capacity {
      throw FDTError(.noSpace, at: nil, "blob of \(size) bytes exceeds capacity of \(capacity)")
    }
  }

  /// Adds a memory reservation entry. Only before the first node, as
  /// `fdt_add_reservemap_entry`.
  public mutating func addReservation(address: UInt64, size: UInt64) throws(FDTError) {
    guard case .reservations = state else {
      throw FDTError(.badState, at: nil, "memory reservations must come before the first node")
    }
    reservations.append(MemoryReservation(address: address, size: size))
    do throws(FDTError) { try checkSpace() } catch {
      reservations.removeLast()
      throw error
    }
  }

  /// Opens a node; the first one is the root and must be named "".
  public mutating func beginNode(_ name: String) throws(FDTError) {
    let depth: Int
    switch state {
    case .reservations:
      depth = 0
    case .structure(let d, let rootClosed):
      if d == 0 && rootClosed {
        throw FDTError(.badState, at: nil, "a tree has one root; it is already closed")
      }
      depth = d
    case .finished:
      throw FDTError(.badState, at: nil, "the writer is finished")
    }
    if depth == 0 && !name.isEmpty {
      throw FDTError(.badName, at: nil, "the root node must be named \"\", not \"\(name)\"")
    }
    var name = name
    let mark = structure.count
    let hasNUL: Bool = name.withUTF8 { n in
      if let p = n.baseAddress, memchrCompat(p, n.count) != nil { return true }
      // Token, name, NUL, padding: zero-filled, then the token and name.
      let at = grow(by: alignUp(4 + n.count + 1, 4))
      structure.withUnsafeMutableBytes { all in
        all.storeBytes(of: FDTToken.beginNode.rawValue.bigEndian, toByteOffset: at, as: UInt32.self)
        if let p = n.baseAddress {
          (all.baseAddress! + at + 4).copyMemory(from: p, byteCount: n.count)
        }
      }
      return false
    }
    if hasNUL { throw Self.nulInName(name) }
    do throws(FDTError) { try checkSpace() } catch {
      structure.removeSubrange(mark...)
      throw error
    }
    state = .structure(depth: depth + 1, rootClosed: false)
  }

  /// Closes the node opened last.
  public mutating func endNode() throws(FDTError) {
    guard case .structure(let depth, _) = state, depth > 0 else {
      throw FDTError(.badState, at: nil, "endNode without an open node")
    }
    appendToken(.endNode)
    do throws(FDTError) { try checkSpace() } catch {
      structure.removeLast(4)
      throw error
    }
    state = .structure(depth: depth - 1, rootClosed: depth == 1)
  }

  /// Adds a property of `count` bytes to the open node and lets `fill`
  /// write its value in place (libfdt's `fdt_property_placeholder`).
  public mutating func property(
    _ name: String, count: Int, fill: (UnsafeMutableRawBufferPointer) -> Void
  ) throws(FDTError) {
    try appendProperty(name, count: count) { value in
      fill(UnsafeMutableRawBufferPointer(start: value, count: count))
    }
  }

  /// The body of every `property` call: checks, the name's place in the
  /// strings block, then one zero-filled record (token, length, name
  /// offset, value, padding) whose value `write` fills in.
  @inline(__always)
  private mutating func appendProperty(
    _ name: String, count: Int, write: (UnsafeMutableRawPointer) -> Void
  ) throws(FDTError) {
    guard case .structure(let depth, _) = state, depth > 0 else {
      throw FDTError(.badState, at: nil, "property \"\(name)\" outside a node")
    }
    guard count >= 0, count <= Int(UInt32.max) else {
      throw FDTError(.badValue, at: nil, "property \"\(name)\" of \(count) bytes")
    }
    var utf8Name = name
    let found: (position: Int, added: Bool)? = utf8Name.withUTF8 { n in
      if let p = n.baseAddress, memchrCompat(p, n.count) != nil { return nil }
      return strings.position(of: n)
    }
    guard let found else { throw Self.nulInName(name) }
    let (position, added) = found
    let mark = grow(by: 12 + alignUp(count, 4))
    structure.withUnsafeMutableBytes { all in
      let record = all.baseAddress! + mark
      record.storeBytes(of: FDTToken.property.rawValue.bigEndian, as: UInt32.self)
      record.storeBytes(of: UInt32(count).bigEndian, toByteOffset: 4, as: UInt32.self)
      record.storeBytes(
        of: UInt32(truncatingIfNeeded: position).bigEndian, toByteOffset: 8, as: UInt32.self)
      write(record + 12)
    }
    if strings.newestFirst { nameOffsetFixups.append(mark + 8) }
    do throws(FDTError) { try checkSpace() } catch {
      structure.removeSubrange(mark...)
      if strings.newestFirst { nameOffsetFixups.removeLast() }
      if added { strings.removeLast(name) }
      throw error
    }
  }

  /// Adds a property whose value is `bytes`, as they are.
  public mutating func property(_ name: String, bytes: some Collection<UInt8>) throws(FDTError) {
    let count = bytes.count
    try appendProperty(name, count: count) { value in
      let copied: Void? = bytes.withContiguousStorageIfAvailable { source in
        if let p = source.baseAddress { value.copyMemory(from: p, byteCount: count) }
      }
      if copied == nil {
        UnsafeMutableRawBufferPointer(start: value, count: count).copyBytes(from: bytes)
      }
    }
  }

  /// Adds a property with no value (a boolean property).
  public mutating func property(_ name: String) throws(FDTError) {
    try property(name, count: 0) { _ in }
  }

  /// Adds a NUL-terminated string property.
  public mutating func property(_ name: String, string: String) throws(FDTError) {
    var string = string
    let count = string.utf8.count
    try appendProperty(name, count: count + 1) { value in
      // The NUL is already there: the record is zero-filled.
      string.withUTF8 { s in
        if let p = s.baseAddress { value.copyMemory(from: p, byteCount: count) }
      }
    }
  }

  /// Adds a string list: each string NUL-terminated, one after the other.
  public mutating func property(_ name: String, strings list: [String]) throws(FDTError) {
    var count = 0
    for s in list { count += s.utf8.count + 1 }
    try appendProperty(name, count: count) { value in
      var at = 0
      for var s in list {
        s.withUTF8 { s in
          if let p = s.baseAddress { (value + at).copyMemory(from: p, byteCount: s.count) }
          at += s.count + 1
        }
      }
    }
  }

  /// Adds big-endian 32-bit cells (`<...>` in DTS).
  public mutating func property(_ name: String, cells: [UInt32]) throws(FDTError) {
    try appendProperty(name, count: cells.count * 4) { value in
      cells.withUnsafeBufferPointer { cells in
        for i in cells.indices {
          value.storeBytes(of: cells[i].bigEndian, toByteOffset: i * 4, as: UInt32.self)
        }
      }
    }
  }

  /// Adds big-endian 64-bit values (`/bits/ 64 <...>` in DTS).
  public mutating func property(_ name: String, cells64: [UInt64]) throws(FDTError) {
    try appendProperty(name, count: cells64.count * 8) { value in
      cells64.withUnsafeBufferPointer { cells in
        for i in cells.indices {
          value.storeBytes(of: cells[i].bigEndian, toByteOffset: i * 8, as: UInt64.self)
        }
      }
    }
  }

  /// Adds integers in this machine's byte order, as KHO payloads are
  /// (`struct kho_mem { u64 addr; u64 len; }` arrays, format versions).
  public mutating func property<T: FixedWidthInteger & BitwiseCopyable>(
    _ name: String, native values: [T]
  ) throws(FDTError) {
    let count = values.count * MemoryLayout<T>.size
    try appendProperty(name, count: count) { value in
      values.withUnsafeBytes { source in
        if let p = source.baseAddress { value.copyMemory(from: p, byteCount: count) }
      }
    }
  }

  /// Closes the blob and returns its bytes (`fdt_finish`).
  public mutating func finish() throws(FDTError) -> [UInt8] {
    guard case .structure(0, true) = state else {
      if case .finished = state {
        throw FDTError(.badState, at: nil, "finish called twice")
      }
      throw FDTError(.badState, at: nil, "finish with the root node missing or still open")
    }
    // `size` already counts FDT_END: a capacity equal to the final size
    // suffices, as a libfdt buffer of exactly `totalsize` does.
    try checkSpace()
    appendToken(.end)
    state = .finished
    return assemble()
  }

  private func assemble() -> [UInt8] {
    let reservationOffset = layout.reservationOffset
    let structOffset = reservationOffset + (reservations.count + 1) * FDTFormat.reservationEntrySize
    let stringsOffset = structOffset + structure.count
    let stringBytes = strings.finalBytes()
    let total = stringsOffset + stringBytes.count
    return [UInt8](unsafeUninitializedCapacity: total) { out, initialized in
      let raw = UnsafeMutableRawBufferPointer(out)
      raw.initializeMemory(as: UInt8.self, repeating: 0)
      func put32(_ value: UInt32, _ at: Int) {
        raw.storeBytes(of: value.bigEndian, toByteOffset: at, as: UInt32.self)
      }
      func put64(_ value: UInt64, _ at: Int) {
        raw.storeBytes(of: value.bigEndian, toByteOffset: at, as: UInt64.self)
      }
      put32(FDTFormat.magic, HeaderField.magic.rawValue)
      put32(UInt32(total), HeaderField.totalSize.rawValue)
      put32(UInt32(structOffset), HeaderField.structOffset.rawValue)
      put32(UInt32(stringsOffset), HeaderField.stringsOffset.rawValue)
      put32(UInt32(reservationOffset), HeaderField.reservationOffset.rawValue)
      put32(FDTFormat.version, HeaderField.version.rawValue)
      put32(FDTFormat.lastCompatibleVersion, HeaderField.lastCompatibleVersion.rawValue)
      put32(bootCPUID, HeaderField.bootCPUID.rawValue)
      put32(UInt32(stringBytes.count), HeaderField.stringsSize.rawValue)
      put32(UInt32(structure.count), HeaderField.structSize.rawValue)
      for (i, entry) in reservations.enumerated() {
        let at = reservationOffset + i * FDTFormat.reservationEntrySize
        put64(entry.address, at)
        put64(entry.size, at + 8)
      }
      structure.withUnsafeBytes { src in
        UnsafeMutableRawBufferPointer(rebasing: raw[structOffset..<stringsOffset])
          .copyMemory(from: src)
      }
      stringBytes.withUnsafeBytes { src in
        UnsafeMutableRawBufferPointer(rebasing: raw[stringsOffset..<total]).copyMemory(from: src)
      }
      for fixup in nameOffsetFixups {
        let at = structOffset + fixup
        let encoded = Int(UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: at, as: UInt32.self)))
        put32(UInt32(strings.finalOffset(encoded)), at)
      }
      initialized = total
    }
  }

  // MARK: - Helpers

  /// Appends `count` zero bytes to the structure block and returns where
  /// they start.
  @inline(__always)
  private mutating func grow(by count: Int) -> Int {
    let at = structure.count
    structure.append(contentsOf: repeatElement(0, count: count))
    return at
  }

  @inline(__always)
  private mutating func appendToken(_ token: FDTToken) {
    let at = grow(by: 4)
    structure.withUnsafeMutableBytes {
      $0.storeBytes(of: token.rawValue.bigEndian, toByteOffset: at, as: UInt32.self)
    }
  }

  private static func nulInName(_ name: String) -> FDTError {
    FDTError(.badName, at: nil, "name \"\(name)\" contains a NUL byte")
  }
}
