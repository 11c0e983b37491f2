import CFUSEKernel

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// What the serving loop does after one request.
enum Outcome {
  /// Reply with success and this payload.
  case reply([UInt8])
  /// Reply with this errno.
  case error(Int32)
  /// Send nothing: FORGET, BATCH_FORGET and INTERRUPT take no reply.
  case noReply
  /// Reply with success, then stop serving: the connection is going away.
  case destroy
}

extension Outcome {
  /// The message the serving loop writes back for the request `unique`, or
  /// `nil` when the request takes no reply.
  func message(unique: UInt64) -> [UInt8]? {
    switch self {
    case .reply(let payload): replyMessage(unique: unique, payload: payload)
    case .error(let errno): replyMessage(unique: unique, errno: errno)
    case .noReply: nil
    case .destroy: replyMessage(unique: unique)
    }
  }
}

/// Answers requests from a ``ControlTree``: the file system's semantics,
/// without any I/O on /dev/fuse (the serving loop does that).
struct Session {
  let tree: ControlTree
  /// Owner of every node: the user and group of the service.
  let uid: UInt32
  let gid: UInt32
  /// The timestamps every node reports: when this image started serving.
  let seconds: UInt64
  let nanoseconds: UInt32

  /// The largest write an attribute accepts, as sysfs: one page.
  static let maxAttributeWrite = 4096

  // Mode type bits and dirent types (<sys/stat.h>, <dirent.h>).
  static let directoryType: UInt32 = 0o040000
  static let regularType: UInt32 = 0o100000
  static let direntDirectory: UInt32 = 4
  static let direntRegular: UInt32 = 8

  /// The session for `tree`, owned by the calling process's effective user.
  init(tree: ControlTree) {
    self.tree = tree
    uid = geteuid()
    gid = getegid()
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    seconds = UInt64(now.tv_sec)
    nanoseconds = UInt32(now.tv_nsec)
  }

  /// The answer to `request`.
  func handle(_ request: Request) -> Outcome {
    let opcode = fuse_opcode(rawValue: request.header.opcode)
    switch opcode {
    case FUSE_LOOKUP: return lookup(request)
    case FUSE_GETATTR: return getattr(request)
    case FUSE_SETATTR: return setattr(request)
    case FUSE_OPEN: return open(request)
    case FUSE_READ: return read(request)
    case FUSE_WRITE: return write(request)
    case FUSE_OPENDIR: return opendir(request)
    case FUSE_READDIR: return readdir(request)
    case FUSE_STATFS: return statfs()
    case FUSE_ACCESS:
      return tree.present(request.header.nodeid) == nil ? .error(ENOENT) : .reply([])
    case FUSE_FLUSH, FUSE_RELEASE, FUSE_RELEASEDIR, FUSE_FSYNC, FUSE_FSYNCDIR: return .reply([])
    case FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT: return .noReply
    case FUSE_DESTROY: return .destroy
    // sysfs refuses to create (EACCES) and to remove or rename (EPERM).
    case FUSE_CREATE, FUSE_MKNOD, FUSE_MKDIR, FUSE_SYMLINK, FUSE_LINK: return .error(EACCES)
    case FUSE_UNLINK, FUSE_RMDIR, FUSE_RENAME, FUSE_RENAME2: return .error(EPERM)
    // ENOSYS once, and the kernel stops asking for extended attributes.
    default: return .error(ENOSYS)
    }
  }

  // MARK: Nodes

  /// LOOKUP: the entry of a name in a directory.
  private func lookup(_ request: Request) -> Outcome {
    guard let name = request.name else { return .error(EINVAL) }
    guard let node = tree.lookup(name, in: request.header.nodeid) else { return .error(ENOENT) }
    var entry = fuse_entry_out()
    entry.nodeid = node.id
    // Timeouts stay 0: files come and go (`dt`) and sizes change, so the
    // kernel must ask every time, as sysfs never caches either.
    entry.attr = attributes(of: node)
    return .reply(bytes(of: entry))
  }

  /// GETATTR: a node's attributes.
  private func getattr(_ request: Request) -> Outcome {
    guard let node = tree.present(request.header.nodeid) else { return .error(ENOENT) }
    return .reply(attributeReply(node))
  }

  /// SETATTR: only what `open(O_TRUNC)` and `touch` need succeeds, and
  /// changes nothing; ownership and mode are fixed (EPERM).
  private func setattr(_ request: Request) -> Outcome {
    guard let change = request.argument(fuse_setattr_in.self) else { return .error(EINVAL) }
    guard let node = tree.present(request.header.nodeid) else { return .error(ENOENT) }
    if change.valid & UInt32(FATTR_MODE | FATTR_UID | FATTR_GID) != 0 { return .error(EPERM) }
    if change.valid & UInt32(FATTR_SIZE) != 0 {
      guard case .file(let file) = node.kind else { return .error(EISDIR) }
      guard file.write != nil else { return .error(EACCES) }
    }
    return .reply(attributeReply(node))
  }

  /// The attributes `stat(2)` shows for `node`.
  private func attributes(of node: ControlTree.Node) -> fuse_attr {
    var attr = fuse_attr()
    attr.ino = node.id
    attr.uid = uid
    attr.gid = gid
    attr.blksize = 4096
    (attr.atime, attr.mtime, attr.ctime) = (seconds, seconds, seconds)
    (attr.atimensec, attr.mtimensec, attr.ctimensec) = (nanoseconds, nanoseconds, nanoseconds)
    switch node.kind {
    case .directory(let children):
      attr.mode = Self.directoryType | 0o755
      let subdirectories = children.filter { tree.nodes[$0.id].map(isDirectory) ?? false }.count
      attr.nlink = UInt32(2 + subdirectories)
    case .file(let file):
      attr.mode = Self.regularType | file.mode
      attr.nlink = 1
      attr.size = file.size()
      attr.blocks = (attr.size + 511) / 512
    }
    return attr
  }

  /// A `fuse_attr_out` reply for `node`, with no caching.
  private func attributeReply(_ node: ControlTree.Node) -> [UInt8] {
    var out = fuse_attr_out()
    out.attr = attributes(of: node)
    return bytes(of: out)
  }

  private func isDirectory(_ node: ControlTree.Node) -> Bool {
    if case .directory = node.kind { return true }
    return false
  }

  // MARK: Files

  /// OPEN: refuses, as sysfs does even for root, to open for writing a file
  /// without write bits or writer (and likewise for reading); opens with
  /// direct I/O so every read and write reaches the handlers.
  private func open(_ request: Request) -> Outcome {
    guard let arguments = request.argument(fuse_open_in.self) else { return .error(EINVAL) }
    guard let node = tree.present(request.header.nodeid) else { return .error(ENOENT) }
    guard case .file(let file) = node.kind else { return .error(EISDIR) }
    let access = Int32(bitPattern: arguments.flags) & O_ACCMODE
    let readable = file.read != nil && file.mode & 0o444 != 0
    let writable = file.write != nil && file.mode & 0o222 != 0
    if access != O_WRONLY && !readable { return .error(EACCES) }
    if access != O_RDONLY && !writable { return .error(EACCES) }
    var out = fuse_open_out()
    out.open_flags = UInt32(FOPEN_DIRECT_IO)
    return .reply(bytes(of: out))
  }

  /// The file behind an open node, which may have gone away since the open
  /// (ENODEV, as kernfs gives for a removed attribute).
  private func openFile(_ request: Request) -> Result<ControlFile, Errno> {
    guard let node = tree.nodes[request.header.nodeid] else { return .failure(.noSuchFile) }
    guard case .file(let file) = node.kind else { return .failure(Errno(rawValue: EISDIR)) }
    guard file.isPresent() else { return .failure(.noSuchDevice) }
    return .success(file)
  }

  /// READ: the handler's bytes at the requested offset, at most the
  /// requested count.
  private func read(_ request: Request) -> Outcome {
    guard let arguments = request.argument(fuse_read_in.self) else { return .error(EINVAL) }
    do {
      let file = try openFile(request).get()
      guard let reader = file.read else { return .error(EACCES) }
      guard let offset = Int(exactly: arguments.offset) else { return .reply([]) }
      let count = Int(arguments.size)
      return .reply(Array(try reader(offset, count).prefix(count)))
    } catch {
      return .error(error.rawValue)
    }
  }

  /// WRITE: the handler consumes the bytes of one `write(2)`; more than a
  /// page fails with E2BIG as on sysfs. Success reports every byte written.
  private func write(_ request: Request) -> Outcome {
    let headerSize = MemoryLayout<fuse_write_in>.size
    guard let arguments = request.argument(fuse_write_in.self),
      request.body.count >= headerSize + Int(arguments.size)
    else { return .error(EINVAL) }
    if arguments.size > Self.maxAttributeWrite { return .error(E2BIG) }
    do {
      let file = try openFile(request).get()
      let data = Array(request.body[headerSize..<headerSize + Int(arguments.size)])
      if let writeAt = file.writeAt {
        guard let offset = Int(exactly: arguments.offset) else { return .error(EINVAL) }
        try writeAt(offset, data)
      } else {
        guard let writer = file.write else { return .error(EACCES) }
        try writer(data)
      }
    } catch {
      return .error(error.rawValue)
    }
    var out = fuse_write_out()
    out.size = arguments.size
    return .reply(bytes(of: out))
  }

  // MARK: Directories

  /// OPENDIR: any directory; no handle is needed.
  private func opendir(_ request: Request) -> Outcome {
    guard let node = tree.present(request.header.nodeid) else { return .error(ENOENT) }
    guard isDirectory(node) else { return .error(ENOTDIR) }
    return .reply(bytes(of: fuse_open_out()))
  }

  /// READDIR: `.`, `..` and the children present now, from the entry the
  /// offset names (entry i has offset i + 1), as many as fit.
  private func readdir(_ request: Request) -> Outcome {
    guard let arguments = request.argument(fuse_read_in.self) else { return .error(EINVAL) }
    guard let node = tree.present(request.header.nodeid) else { return .error(ENOENT) }
    guard case .directory(let children) = node.kind else { return .error(ENOTDIR) }
    var entries = [
      (name: ".", id: node.id, type: Self.direntDirectory),
      (name: "..", id: node.parent, type: Self.direntDirectory),
    ]
    for child in children {
      guard let present = tree.present(child.id) else { continue }
      entries.append(
        (child.name, child.id, isDirectory(present) ? Self.direntDirectory : Self.direntRegular))
    }
    var buffer: [UInt8] = []
    var index = Int(clamping: arguments.offset)
    while index < entries.count {
      let entry = entries[index]
      guard
        appendDirent(
          to: &buffer, limit: Int(arguments.size), ino: entry.id,
          offset: UInt64(index + 1), type: entry.type, name: entry.name)
      else { break }
      index += 1
    }
    return .reply(buffer)
  }

  /// STATFS: an empty file system, as sysfs reports.
  private func statfs() -> Outcome {
    var out = fuse_statfs_out()
    out.st.bsize = 4096
    out.st.frsize = 4096
    out.st.namelen = 255
    return .reply(bytes(of: out))
  }
}
