import CKHOSystem

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

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
    throws(SystemCallError) -> UnsafeMutableRawPointer
  {
    try map(length: length, flags: MAP_SHARED, fd: fd.rawValue, offset: offset)
  }

  /// Removes a mapping made by ``mapShared(_:length:offset:)``.
  ///
  /// The corresponding C function is `munmap`.
  public static func unmap(_ address: UnsafeMutableRawPointer, length: Int) throws(SystemCallError)
  {
    _ = try systemCall("munmap") { munmap(address, length) }.get()
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
  ) throws(SystemCallError) {
    _ = try systemCall("madvise") { madvise(address, length, advice.rawValue) }.get()
  }

  /// Maps `length` bytes of fresh zeroed private memory, read-write: a
  /// thread's stack, say (`stack: true` adds `MAP_STACK`).
  ///
  /// The corresponding C function is `mmap` (`MAP_PRIVATE | MAP_ANONYMOUS`).
  public static func mapAnonymous(length: Int, stack: Bool = false) throws(SystemCallError)
    -> UnsafeMutableRawPointer
  {
    try map(length: length, flags: MAP_PRIVATE | MAP_ANONYMOUS | (stack ? MAP_STACK : 0), fd: -1)
  }

  private static func map(length: Int, flags: Int32, fd: Int32, offset: Int64 = 0)
    throws(SystemCallError) -> UnsafeMutableRawPointer
  {
    let pointer = try systemCall("mmap") {
      ckho_mmap(nil, length, PROT_READ | PROT_WRITE, flags, fd, offset)?
        .assumingMemoryBound(to: UInt8.self)
    }.get()
    return UnsafeMutableRawPointer(pointer)
  }
}
