import CKHOSystem

/// `madvise` advice values this module uses.
public struct MemoryAdvice: RawRepresentable, Sendable, Hashable {
  public let rawValue: Int32
  public init(rawValue: Int32) { self.rawValue = rawValue }

  /// `MADV_HUGEPAGE`: back the range with transparent huge pages where the
  /// system allows it.
  public static let hugePage = MemoryAdvice(rawValue: ckho_MADV_HUGEPAGE)
}

/// Memory-mapping calls, grouped as swift-system groups its wrappers.
public enum MemoryMapping {
  /// Maps `length` bytes of `fd` from `offset`, shared and read-write.
  ///
  /// - Parameters:
  ///   - fd: the file to map.
  ///   - length: the number of bytes, not zero.
  ///   - offset: the file offset, a multiple of the page size.
  /// - Returns: the start of the mapping.
  ///
  /// The corresponding C function is `mmap` (`PROT_READ | PROT_WRITE`,
  /// `MAP_SHARED`).
  public static func mapShared(_ fd: FileDescriptor, length: Int, offset: Int64 = 0)
    throws(SystemError) -> UnsafeMutableRawPointer
  {
    let pointer = try systemCall("mmap") { err in
      ckho_mmap_shared(fd.rawValue, length, offset, err)
    }.get()
    // The shim returns NULL only together with a non-zero errno.
    return pointer!
  }

  /// Removes a mapping made by ``mapShared(_:length:offset:)``.
  ///
  /// The corresponding C function is `munmap`.
  public static func unmap(_ address: UnsafeMutableRawPointer, length: Int) throws(SystemError) {
    _ = try systemCall("munmap") { err in ckho_munmap(address, length, err) }.get()
  }

  /// Gives the kernel advice about a range of a mapping.
  ///
  /// - Parameters:
  ///   - address: the start, page-aligned.
  ///   - length: the number of bytes.
  ///   - advice: what to advise.
  ///
  /// The corresponding C function is `madvise`.
  public static func advise(
    _ address: UnsafeMutableRawPointer, length: Int, _ advice: MemoryAdvice
  ) throws(SystemError) {
    _ = try systemCall("madvise") { err in
      ckho_madvise(address, length, advice.rawValue, err)
    }.get()
  }
}
