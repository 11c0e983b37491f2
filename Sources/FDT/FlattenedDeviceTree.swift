/// A validated flattened device tree.
///
/// Creating one checks the whole blob once; every accessor after that
/// trusts the offsets it was given and never reads out of bounds.
///
/// ```swift
/// var writer = FDTWriter()
/// try writer.beginNode("")
/// try writer.property("compatible", string: "kho-v1")
/// try writer.endNode()
/// let tree = try FlattenedDeviceTree(bytes: writer.finish())
/// print(tree.root.property("compatible")?.string ?? "")  // kho-v1
/// ```
public struct FlattenedDeviceTree: Sendable {
  /// The blob and what validation found, shared by the tree and every node
  /// and property taken from it (which are then two words each).
  @usableFromInline
  final class Storage: Sendable {
    @usableFromInline let bytes: [UInt8]
    @usableFromInline let layout: ValidatedLayout

    init(bytes: [UInt8], layout: ValidatedLayout) {
      self.bytes = bytes
      self.layout = layout
    }
  }

  @usableFromInline let storage: Storage

  /// The blob, exactly as given (bytes past `totalsize` included).
  public var bytes: [UInt8] { storage.bytes }
  /// The decoded header.
  public var header: FDTHeader { storage.layout.header }
  @usableFromInline var layout: ValidatedLayout { storage.layout }

  /// Validates `bytes` and opens it.
  ///
  /// - Throws: ``FDTError`` naming the offset and what is wrong.
  public init(bytes: [UInt8]) throws(FDTError) {
    let result: Result<ValidatedLayout, FDTError> = bytes.withUnsafeBytes { raw in
      do throws(FDTError) {
        return .success(try Validator.validate(raw))
      } catch {
        return .failure(error)
      }
    }
    self.storage = Storage(bytes: bytes, layout: try result.get())
  }

  /// Checks `buffer` as `init(bytes:)` does, without copying it.
  public static func validate(_ buffer: UnsafeRawBufferPointer) throws(FDTError) {
    _ = try Validator.validate(buffer)
  }

  /// The number of nodes, root included.
  public var nodeCount: Int { layout.nodeCount }
  /// The number of properties in all nodes.
  public var propertyCount: Int { layout.propertyCount }

  /// The memory reservation entries, without the terminating one.
  public var reservations: [MemoryReservation] {
    withTrusted { b in
      (0..<layout.reservationCount).map { i in
        let at = Int(header.reservationOffset) + i * FDTFormat.reservationEntrySize
        return MemoryReservation(address: b.u64(at), size: b.u64(at + 8))
      }
    }
  }

  /// The root node.
  public var root: FDTNode {
    // The first token that is not a NOP is the root's FDT_BEGIN_NODE.
    var at = layout.structStart
    withTrusted { b in
      while b.u32(at) == FDTToken.nop.rawValue {
        at = b.nextTag(at: at, end: layout.structEnd).next
      }
    }
    return FDTNode(tree: self, offset: at)
  }

  /// The node at an absolute path such as `/chosen` or `/soc/serial@1000`.
  /// A component without `@` also matches a node whose name has a unit
  /// address, as libfdt's `fdt_path_offset` does.
  public func node(atPath path: String) -> FDTNode? {
    guard path.hasPrefix("/") else { return nil }
    var node = root
    for component in path.split(separator: "/", omittingEmptySubsequences: true) {
      guard let next = node.child(named: String(component)) else { return nil }
      node = next
    }
    return node
  }

  @inlinable @inline(__always)
  func withTrusted<R>(_ body: (TrustedBytes) throws -> R) rethrows -> R {
    try storage.bytes.withUnsafeBytes { try body(TrustedBytes($0)) }
  }

  @usableFromInline
  func string(at offset: Int, end: Int) -> String {
    withTrusted { b in
      let nul = b.nul(from: offset, before: end) ?? end
      return String(decoding: UnsafeRawBufferPointer(rebasing: b.base[offset..<nul]), as: UTF8.self)
    }
  }
}

/// One step of ``FlattenedDeviceTree/walk(_:)``.
public enum FDTWalkEvent {
  case beginNode(FDTNode)
  case property(FDTProperty)
  case endNode
}

extension FlattenedDeviceTree {
  /// Visits every node and property in order, in one linear pass.
  @inlinable
  public func walk<E: Error>(_ visit: (FDTWalkEvent) throws(E) -> Void) throws(E) {
    let layout = storage.layout
    var at = layout.structStart
    while true {
      let (token, next) = withTrusted { $0.nextTag(at: at, end: layout.structEnd) }
      switch token {
      case FDTToken.beginNode.rawValue:
        try visit(.beginNode(FDTNode(tree: self, offset: at)))
      case FDTToken.endNode.rawValue:
        try visit(.endNode)
      case FDTToken.property.rawValue:
        try visit(.property(FDTProperty(tree: self, offset: at)))
      case FDTToken.nop.rawValue:
        break
      default:  // FDT_END: validation guarantees nothing else.
        return
      }
      at = next
    }
  }
}

/// A node of a validated tree.
public struct FDTNode: Sendable {
  /// The validated tree this belongs to.
  public let tree: FlattenedDeviceTree
  /// The absolute offset of the node's FDT_BEGIN_NODE token.
  public let offset: Int

  @usableFromInline
  init(tree: FlattenedDeviceTree, offset: Int) {
    self.tree = tree
    self.offset = offset
  }

  private var nameStart: Int { offset + FDTFormat.tokenSize }

  /// The node's name with its unit address (`serial@1000`); "" for the root.
  public var name: String { tree.string(at: nameStart, end: tree.layout.structEnd) }

  /// The offset just past the name and its padding: the first property or
  /// subnode.
  var contentOffset: Int {
    tree.withTrusted { $0.nextTag(at: offset, end: tree.layout.structEnd).next }
  }

  /// The node's properties, in order.
  public var properties: [FDTProperty] {
    var result: [FDTProperty] = []
    var at = contentOffset
    tree.withTrusted { b in
      while true {
        let (token, next) = b.nextTag(at: at, end: tree.layout.structEnd)
        if token == FDTToken.property.rawValue {
          result.append(FDTProperty(tree: tree, offset: at))
        } else if token != FDTToken.nop.rawValue {
          return
        }
        at = next
      }
    }
    return result
  }

  /// The property called `name`, if the node has one.
  public func property(_ name: String) -> FDTProperty? {
    properties.first { $0.name == name }
  }

  /// The node's direct subnodes, in order.
  public var children: [FDTNode] {
    var result: [FDTNode] = []
    var at = contentOffset
    var depth = 0
    tree.withTrusted { b in
      while true {
        let (token, next) = b.nextTag(at: at, end: tree.layout.structEnd)
        switch token {
        case FDTToken.beginNode.rawValue:
          if depth == 0 { result.append(FDTNode(tree: tree, offset: at)) }
          depth += 1
        case FDTToken.endNode.rawValue:
          if depth == 0 { return }
          depth -= 1
        case FDTToken.property.rawValue, FDTToken.nop.rawValue:
          break
        default:
          return
        }
        at = next
      }
    }
    return result
  }

  /// The subnode called `name`; a name without `@` also matches
  /// `name@unit-address`.
  public func child(named name: String) -> FDTNode? {
    let wantsUnit = name.utf8.contains(UInt8(ascii: "@"))
    return children.first { child in
      let childName = child.name
      if childName == name { return true }
      if wantsUnit { return false }
      guard let at = childName.utf8.firstIndex(of: UInt8(ascii: "@")) else { return false }
      return childName.utf8[..<at].elementsEqual(name.utf8)
    }
  }
}

/// A property of a validated tree.
public struct FDTProperty: Sendable {
  /// The validated tree this belongs to.
  public let tree: FlattenedDeviceTree
  /// The absolute offset of the property's FDT_PROP token.
  public let offset: Int

  @usableFromInline
  init(tree: FlattenedDeviceTree, offset: Int) {
    self.tree = tree
    self.offset = offset
  }

  @usableFromInline
  var length: Int {
    Int(tree.withTrusted { $0.u32(offset + FDTFormat.propertyLengthOffset) })
  }
  private var nameOffset: Int {
    Int(tree.withTrusted { $0.u32(offset + FDTFormat.propertyNameOffset) })
  }

  /// The absolute range of the value in the blob.
  @inlinable
  public var valueRange: Range<Int> {
    (offset + FDTFormat.propertyHeaderSize)..<(offset + FDTFormat.propertyHeaderSize + length)
  }

  /// The property's name.
  public var name: String {
    tree.string(at: tree.layout.stringsStart + nameOffset, end: tree.layout.stringsEnd)
  }

  /// The value's bytes.
  public var value: ArraySlice<UInt8> { tree.bytes[valueRange] }

  /// Calls `body` with the value's bytes, without copying them.
  @inlinable
  public func withValueBytes<R, E: Error>(
    _ body: (UnsafeRawBufferPointer) throws(E) -> R
  ) throws(E) -> R {
    let range = valueRange
    let result: Result<R, E> = tree.storage.bytes.withUnsafeBytes { all in
      do throws(E) {
        return .success(try body(UnsafeRawBufferPointer(rebasing: all[range])))
      } catch {
        return .failure(error)
      }
    }
    return try result.get()
  }

  /// The value as one NUL-terminated string, or `nil` if it is not one.
  public var string: String? {
    guard let list = strings, list.count == 1 else { return nil }
    return list[0]
  }

  /// The value as a list of NUL-terminated strings, or `nil` if it does not
  /// end with a NUL.
  public var strings: [String]? {
    let v = value
    guard let last = v.last, last == 0 else { return nil }
    return v.dropLast().split(separator: 0, omittingEmptySubsequences: false).map {
      String(decoding: $0, as: UTF8.self)
    }
  }

  /// The value as big-endian 32-bit cells, or `nil` if its size is not a
  /// multiple of 4.
  public var cells: [UInt32]? { bigEndian(UInt32.self) }

  /// The value as big-endian 64-bit numbers, or `nil` if its size is not a
  /// multiple of 8.
  public var cells64: [UInt64]? { bigEndian(UInt64.self) }

  /// The value as integers in this machine's byte order (KHO payloads), or
  /// `nil` if its size is not a multiple of the integer's.
  public func native<T: FixedWidthInteger & BitwiseCopyable>(_: T.Type) -> [T]? {
    let size = MemoryLayout<T>.size
    guard length % size == 0 else { return nil }
    return withValueBytes { raw in
      (0..<(raw.count / size)).map { raw.loadUnaligned(fromByteOffset: $0 * size, as: T.self) }
    }
  }

  private func bigEndian<T: FixedWidthInteger & BitwiseCopyable>(_: T.Type) -> [T]? {
    native(T.self)?.map { T(bigEndian: $0) }
  }
}

/// `alignUp(value, 4)`, for inlinable code.
@usableFromInline @inline(__always)
func alignUp4(_ value: Int) -> Int { (value + 3) & ~3 }
