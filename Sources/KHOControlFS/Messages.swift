import CFUSEKernel

/// One request read from /dev/fuse: its header and the bytes after it.
struct Request {
  var header: fuse_in_header
  var body: [UInt8]

  /// The size of the header that starts every request.
  static let headerSize = MemoryLayout<fuse_in_header>.size

  /// Parses one message as read from /dev/fuse; `nil` if it is shorter than
  /// a header or than its own length field says.
  init?(_ bytes: UnsafeRawBufferPointer) {
    guard bytes.count >= Self.headerSize else { return nil }
    header = bytes.loadUnaligned(as: fuse_in_header.self)
    guard Int(header.len) <= bytes.count, Int(header.len) >= Self.headerSize else { return nil }
    body = Array(bytes[Self.headerSize..<Int(header.len)])
  }

  /// The argument structure at the start of the body, or `nil` when the
  /// body is too short for it.
  func argument<T>(_ type: T.Type) -> T? {
    guard body.count >= MemoryLayout<T>.size else { return nil }
    return body.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
  }

  /// The argument structure at the start of the body, zero-filled where the
  /// body is shorter: older kernels send a shorter `fuse_init_in`.
  func paddedArgument<T>(_ type: T.Type) -> T {
    var padded = body
    if padded.count < MemoryLayout<T>.size {
      padded += [UInt8](repeating: 0, count: MemoryLayout<T>.size - padded.count)
    }
    return padded.withUnsafeBytes { $0.loadUnaligned(as: T.self) }
  }

  /// The NUL-terminated name at the start of the body (LOOKUP).
  var name: String? {
    guard let end = body.firstIndex(of: 0) else { return nil }
    return String(decoding: body[..<end], as: UTF8.self)
  }
}

/// The bytes of a plain C structure, to append to a reply.
func bytes<T>(of value: T) -> [UInt8] {
  withUnsafeBytes(of: value) { Array($0) }
}

/// A complete reply message: header then `payload`, or only a header
/// carrying `-errno` when `errno` is nonzero.
func replyMessage(unique: UInt64, errno: Int32 = 0, payload: [UInt8] = []) -> [UInt8] {
  let body = errno == 0 ? payload : []
  var header = fuse_out_header()
  header.len = UInt32(MemoryLayout<fuse_out_header>.size + body.count)
  header.error = -errno
  header.unique = unique
  return bytes(of: header) + body
}

/// Appends one directory entry in the layout of `struct fuse_dirent`,
/// padded to 8 bytes; returns `false` (appending nothing) if it would make
/// `buffer` longer than `limit`.
func appendDirent(
  to buffer: inout [UInt8], limit: Int, ino: UInt64, offset: UInt64, type: UInt32, name: String
) -> Bool {
  let nameBytes = Array(name.utf8)
  // struct fuse_dirent { u64 ino; u64 off; u32 namelen; u32 type; char name[]; }
  // written field by field: Swift does not import the flexible array member.
  let unpadded = 24 + nameBytes.count
  let size = (unpadded + 7) & ~7
  guard buffer.count + size <= limit else { return false }
  buffer +=
    bytes(of: ino) + bytes(of: offset) + bytes(of: UInt32(nameBytes.count)) + bytes(of: type)
  buffer += nameBytes + [UInt8](repeating: 0, count: size - unpadded)
  return true
}
