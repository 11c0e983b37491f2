/// Why `CacheStore.format` or `CacheStore.attach` refused a region.
public enum CacheRegionError: Error, Equatable, Sendable, CustomStringConvertible {
  /// The region is too small for the header, the index and one slab page.
  case regionTooSmall(size: Int)
  /// The item size limit is outside 1 KiB...1 GiB (memcached's `-I` bounds).
  case invalidItemSizeMax(Int)
  /// `-n` is not positive or exceeds the item size limit, or `-f` is not
  /// a finite number above 1.
  case invalidSizeClasses(SizeClasses)
  /// The region base is not 8-byte aligned.
  case misalignedBase
  /// The first 8 bytes are not "KHOCACHE": this is not a cache region.
  case badMagic
  /// The region was written by a format version this build does not know.
  case unsupportedVersion(UInt32)
  /// The header records another region size than the one mapped.
  case sizeMismatch(recorded: UInt64, mapped: Int)
  /// The geometry fields do not match their checksum.
  case checksumMismatch
  /// A structural invariant does not hold; `what` names it.
  case corrupt(String)
  /// The previous owner did not freeze the store: an operation may have
  /// been cut in the middle, so its state cannot be trusted.
  case notFrozen

  public var description: String {
    switch self {
    case .regionTooSmall(let size): "cache region of \(size) bytes is too small"
    case .invalidItemSizeMax(let size): "item size max \(size) is outside 1024...1073741824"
    case .invalidSizeClasses(let classes):
      "size classes -n \(classes.chunkSpace) -f \(classes.growthFactor): -n must be between 1 and the item size limit, -f a number above 1"
    case .misalignedBase: "cache region base is not 8-byte aligned"
    case .badMagic: "cache region has no KHOCACHE magic"
    case .unsupportedVersion(let v):
      "cache region format version \(v) is not supported (this build knows 1)"
    case .sizeMismatch(let recorded, let mapped):
      "cache region header records \(recorded) bytes but \(mapped) are mapped"
    case .checksumMismatch: "cache region geometry checksum mismatch"
    case .corrupt(let what): "cache region is corrupt: \(what)"
    case .notFrozen: "cache region was not frozen by its previous owner"
    }
  }
}

/// Why a cache operation failed. The protocol layer maps each case to
/// memcached's reply.
public enum CacheOperationError: Error, Equatable, Sendable {
  /// The store is frozen for a handover: no mutation may happen now.
  /// Retry after `unfreeze()`, or on the next image.
  case frozen
  /// Key longer than 250 bytes (or empty).
  case badKey
  /// Header, key and value together exceed the item size limit
  /// ("SERVER_ERROR object too large for cache").
  case tooLarge
  /// No chunk could be found or evicted for the item
  /// ("SERVER_ERROR out of memory storing object").
  case outOfMemory
  /// incr/decr on a value that is not a decimal number.
  case nonNumeric
}
