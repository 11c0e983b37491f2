/// A value that an arena collection stores as bytes and reads back.
///
/// The bytes are copied in on a write and decoded on a read; a decode that
/// fails (a length that does not fit the type, UTF-8 that does not
/// validate) reads as absent, never as a wrong value.
public protocol ArenaCodable {
  /// Calls `body` with the bytes that represent `self`.
  func withArenaBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
  /// Decodes a value from `arenaBytes`, or returns `nil` when they are not one.
  init?(arenaBytes: UnsafeRawBufferPointer)
}

/// A fixed-width value stored as its in-memory bytes.
///
/// Conform a `BitwiseCopyable` struct of your own with an empty extension
/// (`extension Counter: ArenaFixedWidth {}`); the next image must lay it
/// out the same way, which is why the type's layout belongs to the
/// collection's version.
public protocol ArenaFixedWidth: ArenaCodable, BitwiseCopyable {}

extension ArenaFixedWidth {
  /// The value's own bytes.
  @inlinable public func withArenaBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows
    -> R
  {
    try withUnsafeBytes(of: self) { try body($0) }
  }

  /// The value, when `arenaBytes` has exactly its size.
  @inlinable public init?(arenaBytes: UnsafeRawBufferPointer) {
    guard arenaBytes.count == MemoryLayout<Self>.size else { return nil }
    self = arenaBytes.loadUnaligned(as: Self.self)
  }
}

extension Int: ArenaFixedWidth {}
extension Int64: ArenaFixedWidth {}
extension Int32: ArenaFixedWidth {}
extension UInt: ArenaFixedWidth {}
extension UInt64: ArenaFixedWidth {}
extension UInt32: ArenaFixedWidth {}
extension UInt16: ArenaFixedWidth {}
extension UInt8: ArenaFixedWidth {}
extension Double: ArenaFixedWidth {}

extension Array: ArenaCodable where Element == UInt8 {
  /// The array's bytes.
  @inlinable public func withArenaBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows
    -> R
  {
    try withUnsafeBytes { try body($0) }
  }

  /// A copy of `arenaBytes`.
  @inlinable public init?(arenaBytes: UnsafeRawBufferPointer) { self.init(arenaBytes) }
}

extension String: ArenaCodable {
  /// The string's UTF-8.
  @inlinable public func withArenaBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows
    -> R
  {
    if let result = try utf8.withContiguousStorageIfAvailable({
      try body(UnsafeRawBufferPointer($0))
    }) {
      return result
    }
    return try Array(utf8).withUnsafeBytes { try body($0) }
  }

  /// The string, when `arenaBytes` are valid UTF-8.
  @inlinable public init?(arenaBytes: UnsafeRawBufferPointer) {
    self.init(validating: arenaBytes.bindMemory(to: UInt8.self), as: UTF8.self)
  }
}
