import KHOSystem

/// The scratch region: one contiguous arena range where the next image's
/// handover data is written and which never holds preserved memory (the
/// seed's `kho_reserve_scratch`, a CMA region in the kernel).
public enum Scratch {
  /// Reserves `length` bytes (rounded up to whole pages) as scratch at
  /// first start; 0 gives an empty range (no scratch: KHO then refuses to
  /// activate with ENOMEM, as in the seed).
  ///
  /// After a KHO boot, do not call this: reserve the previous image's
  /// scratch range instead, so that continuous handovers reuse it.
  ///
  /// - Parameters:
  ///   - length: the `kho_scratch` value (see ``ScratchParameter``).
  ///   - allocator: the arena's allocator.
  /// - Returns: the reserved range.
  public static func reserve(length: UInt64, in allocator: PageAllocator) throws(AllocatorError)
    -> Range<UInt64>
  {
    guard length > 0 else { return 0..<0 }
    return try allocator.allocate(bytes: length)
  }
}
