/// The fds the keeper holds for the service: an ordered list of (name, fd),
/// passed back in that order as fds 3, 4, ... with `LISTEN_FDNAMES`.
///
/// Storing under a name replaces (and closes) every fd held under that name,
/// so a service that stores its fds again at each start does not fill the
/// store. (systemd keeps same-named fds side by side and drops only a
/// duplicate of the same open file.)
struct FDStore {
  /// The most fds held at once (`--fd-store-max`).
  let capacity: Int
  private(set) var entries: [(name: String, fd: Int32)] = []

  init(capacity: Int) {
    self.capacity = capacity
    entries.reserveCapacity(capacity)
  }

  var isEmpty: Bool { entries.isEmpty }
  var count: Int { entries.count }
  var fds: [Int32] { entries.map(\.fd) }
  var names: [String] { entries.map(\.name) }

  /// Holds `fds` under `name`, closing the fds held under it before. If that
  /// would exceed `capacity`, keeps the store as it was and returns `false`:
  /// the caller still owns `fds` and closes them.
  mutating func store(_ fds: [Int32], name: String) -> Bool {
    let others = entries.count(where: { $0.name != name })
    if others + fds.count > capacity { return false }
    _ = remove(name: name)
    for fd in fds { entries.append((name, fd)) }
    return true
  }

  /// Closes and forgets every fd held under `name`; returns how many.
  mutating func remove(name: String) -> Int {
    var removed = 0
    entries.removeAll { entry in
      guard entry.name == name else { return false }
      KeeperSystem.close(entry.fd)
      removed += 1
      return true
    }
    return removed
  }

  /// `holding 2 fds: kho-arena, listen`, for the log.
  var summary: String {
    if entries.isEmpty { return "holding no fds" }
    return "holding \(entries.count) fd\(entries.count == 1 ? "" : "s"): "
      + names.joined(separator: ", ")
  }
}
