/// The files of a control mount, by path; directories are implied by the
/// paths.
///
/// Node ids (what the kernel knows a file by) are derived from each path
/// alone, so the next image of a service, given a tree with the same paths,
/// answers for the node ids the kernel learned from the previous image; a
/// path added by the next version does not renumber the others.
///
/// ```swift
/// let tree = ControlTree([
///   "kernel/kho/active": .attribute(mode: 0o600) { Array("0\n".utf8) },
///   "kernel/kexec_loaded": .attribute(mode: 0o444) { Array("0\n".utf8) },
/// ])
/// ```
public struct ControlTree: Sendable {
  /// One node: a directory or a file.
  struct Node: Sendable {
    var id: UInt64
    var parent: UInt64
    var path: String
    var name: String
    var kind: Kind
  }

  /// A directory lists its children sorted by name; a file has its handlers.
  enum Kind: Sendable {
    case directory([Child])
    case file(ControlFile)
  }

  /// A directory entry.
  struct Child: Sendable {
    var name: String
    var id: UInt64
  }

  /// The node id of the root directory, fixed by the protocol.
  static let rootID: UInt64 = 1

  /// Every node by id.
  let nodes: [UInt64: Node]

  /// A tree holding `files`, keyed by relative paths such as
  /// `"kernel/kho/active"`. Every prefix of a path is a directory (mode
  /// 0755).
  ///
  /// A path that is empty, absolute, has an empty, `.` or `..` component, or
  /// is both a file and a directory, is a programming error (it traps).
  ///
  /// - Parameter files: the files, by path.
  public init(_ files: [String: ControlFile]) {
    var nodes: [UInt64: Node] = [
      Self.rootID: Node(
        id: Self.rootID, parent: Self.rootID, path: "", name: "", kind: .directory([]))
    ]
    for (path, file) in files.sorted(by: { $0.key < $1.key }) {
      Self.insert(file, at: Self.components(of: path), into: &nodes)
    }
    self.nodes = nodes
  }

  /// The checked components of `path`.
  private static func components(of path: String) -> [String] {
    let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
    precondition(
      !parts.isEmpty && parts.allSatisfy { !$0.isEmpty && $0 != "." && $0 != ".." },
      "bad control file path \"\(path)\"")
    return parts
  }

  /// Adds the directories leading to `file`, then `file`.
  private static func insert(
    _ file: ControlFile, at parts: [String], into nodes: inout [UInt64: Node]
  ) {
    var parent = rootID
    for depth in parts.indices {
      let path = parts[...depth].joined(separator: "/")
      let isFile = depth == parts.count - 1
      let id = nodeID(path: path, isDirectory: !isFile)
      if let existing = nodes[id] {
        // Only a directory shared by several paths is met twice.
        precondition(
          existing.path == path, "control paths \"\(existing.path)\" and \"\(path)\" clash")
        guard case .directory = existing.kind, !isFile else {
          preconditionFailure("\"\(path)\" is a file and a directory")
        }
      } else {
        precondition(
          nodes[nodeID(path: path, isDirectory: isFile)]?.path != path,
          "\"\(path)\" is a file and a directory")
        let kind: Kind = isFile ? .file(file) : .directory([])
        nodes[id] = Node(id: id, parent: parent, path: path, name: parts[depth], kind: kind)
        addChild(Child(name: parts[depth], id: id), to: parent, in: &nodes)
      }
      parent = id
    }
  }

  /// Records `child` in its parent directory, keeping names sorted.
  private static func addChild(_ child: Child, to parent: UInt64, in nodes: inout [UInt64: Node]) {
    guard case .directory(var children) = nodes[parent]?.kind else { return }
    children.append(child)
    children.sort { $0.name < $1.name }
    nodes[parent]?.kind = .directory(children)
  }

  /// The node id of `path`: FNV-1a (64 bits) of its kind and path, so the
  /// same path always gets the same id, and a path that changes from file to
  /// directory between versions gets a new one (the kernel would otherwise
  /// see an inode change type and mark it bad).
  static func nodeID(path: String, isDirectory: Bool) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in ((isDirectory ? "d:" : "f:") + path).utf8 {
      hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
    }
    // 0 is invalid and 1 is the root; clearing the top bit keeps ids
    // positive as a signed ino_t too.
    hash &= 0x7fff_ffff_ffff_ffff
    precondition(hash > rootID, "control path \"\(path)\" hashes to a reserved node id")
    return hash
  }

  /// The node `id`, if it exists now (absent files do not).
  func present(_ id: UInt64) -> Node? {
    guard let node = nodes[id] else { return nil }
    if case .file(let file) = node.kind, !file.isPresent() { return nil }
    return node
  }

  /// The child of directory `parent` named `name`, if it exists now.
  func lookup(_ name: String, in parent: UInt64) -> Node? {
    guard case .directory(let children) = nodes[parent]?.kind,
      let child = children.first(where: { $0.name == name })
    else { return nil }
    return present(child.id)
  }
}
