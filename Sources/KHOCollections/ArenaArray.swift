/// A growable array of `BitwiseCopyable` elements in one caller-given
/// region, up to the region's capacity.
///
/// Layout (native-endian):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | magic `"KHOCARRY"` |
/// | 8 | 4 | version (1) |
/// | 12 | 4 | element size (checked against `MemoryLayout<Element>.size`) |
/// | 16 | 8 | count |
/// | 64 | slot × capacity | slots: the element, padded to 4, then its `crc32c` |
///
/// **Never trusting the region**: the element size and count are checked
/// at attach; an element whose CRC fails reads as `nil`, is left out of
/// the sequence, and is counted in ``damage``.
///
/// **Growth across upgrades**: the capacity is not stored; it is what the
/// region holds, so a later image that attaches the same bytes in a bigger
/// region has a bigger array with no conversion.
public final class ArenaArray<Element: BitwiseCopyable> {
  /// The string that names this layout in its FDT node.
  public static var compatible: String { "kho-collections,array-v1" }
  /// The layout version this image writes and reads.
  public static var version: UInt32 { 1 }
  static var magic: UInt64 { 0x5952_5241_434f_484b }  // "KHOCARRY"
  static var headerSize: Int { 64 }
  static var slot: Int { (MemoryLayout<Element>.size + 3) & ~3 + 4 }

  let region: Region
  /// Damaged elements met since this image attached.
  public private(set) var damage = 0

  private init(_ region: Region) { self.region = region }

  /// Formats `bytes` as an empty array.
  public static func format(_ bytes: UnsafeMutableRawBufferPointer) throws(ArenaAttachError)
    -> ArenaArray
  {
    guard bytes.count >= headerSize else { throw .tooSmall(needed: headerSize, have: bytes.count) }
    let array = ArenaArray(Region(bytes))
    array.region.base.initializeMemory(as: UInt8.self, repeating: 0, count: headerSize)
    array.region.store64(magic, 0)
    array.region.store32(version, 8)
    array.region.store32(UInt32(MemoryLayout<Element>.size), 12)
    return array
  }

  /// Attaches the array the previous image left in `bytes` (O(1), header
  /// checked); a bigger region is a bigger capacity.
  public static func attach(_ bytes: UnsafeMutableRawBufferPointer) throws(ArenaAttachError)
    -> ArenaArray
  {
    guard bytes.count >= headerSize else { throw .tooSmall(needed: headerSize, have: bytes.count) }
    let array = ArenaArray(Region(bytes))
    let r = array.region
    guard r.load64(0) == magic else { throw .badMagic(r.load64(0)) }
    guard r.load32(8) == version else { throw .unsupportedVersion(r.load32(8)) }
    guard r.load32(12) == UInt32(MemoryLayout<Element>.size) else {
      throw .badHeader(
        "element size \(r.load32(12)), this image's is \(MemoryLayout<Element>.size)")
    }
    guard r.load64(16) <= UInt64(array.capacity) else {
      throw .badHeader("count \(r.load64(16)) above capacity \(array.capacity)")
    }
    return array
  }

  /// The elements the region has room for.
  public var capacity: Int { (region.count - Self.headerSize) / Self.slot }
  /// The elements stored (damaged ones included).
  public var count: Int { Int(region.load64(16)) }

  /// Why an append was refused.
  public enum AppendError: Error, Sendable, Equatable {
    /// The region holds no more elements.
    case full(capacity: Int)
  }

  /// Appends `element`.
  public func append(_ element: Element) throws(AppendError) {
    guard count < capacity else { throw .full(capacity: capacity) }
    write(element, at: count)
    region.store64(UInt64(count + 1), 16)
  }

  /// Removes and returns the last element (nil when empty or damaged; the
  /// count drops either way).
  @discardableResult public func removeLast() -> Element? {
    guard count > 0 else { return nil }
    let last = self[count - 1]
    region.store64(UInt64(count - 1), 16)
    return last
  }

  /// Removes every element.
  public func removeAll() { region.store64(0, 16) }

  private func write(_ element: Element, at index: Int) {
    let offset = Self.headerSize + index * Self.slot
    (region.base + offset).storeBytes(of: element, as: Element.self)
    region.store32(region.crc(offset, MemoryLayout<Element>.size), offset + Self.slot - 4)
  }

  /// The element at `index`: `nil` when out of range or damaged. Setting
  /// an index in range replaces it; setting `nil` is ignored.
  public subscript(index: Int) -> Element? {
    get {
      guard index >= 0, index < count else { return nil }
      let offset = Self.headerSize + index * Self.slot
      guard region.crc(offset, MemoryLayout<Element>.size) == region.load32(offset + Self.slot - 4)
      else {
        damage += 1
        return nil
      }
      return (region.base + offset).loadUnaligned(as: Element.self)
    }
    set {
      guard let newValue, index >= 0, index < count else { return }
      write(newValue, at: index)
    }
  }
}

extension ArenaArray: Sequence {
  /// The intact elements in order (damaged ones skipped).
  public struct Iterator: IteratorProtocol {
    let array: ArenaArray
    var index = 0

    public mutating func next() -> Element? {
      while index < array.count {
        index += 1
        if let element = array[index - 1] { return element }
      }
      return nil
    }
  }

  /// An iterator over the intact elements.
  public func makeIterator() -> Iterator { Iterator(array: self) }
}
