import ArgumentParser
import FDT

/// The output formats of the verbs that describe state.
enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
  case text
  case json
}

extension DT {
  /// `kho dt decode FILE|M`: a KHO-aware view of a blob.
  struct Decode: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract:
        "Describe a KHO blob: its subsystems, their preserved ranges, and what is wrong with them.",
      discussion: """
        FILE is a blob, or the control mount M of a running service (its \
        kernel/kho/dt, with scratch from kernel/kho/scratch_phys and \
        scratch_len). Checks the root's compatible is kho-v1, lists every \
        node with its 'mem' ranges (struct kho_mem {u64 addr; u64 len}, \
        native-endian) and the total preserved bytes, and flags ranges that \
        overlap each other or fall in scratch. Also reads blobs of real \
        kernels: /sys/kernel/kho/dt of the KHO v3 series (the same 'mem' \
        layout) and mainline's debugfs kho/out/fdt (a preserved-memory-map \
        address on the root, an 'fdt' address per subsystem), and kho-v4 \
        roots as mainline writes them since it became stateless (a \
        'preserved-data' address and a 'blob-size' per sub-blob), which is \
        also what a running service's stateless description is: with \
        --stateless, M/kernel/kho/preservation/dt. Exits 1 when the blob is \
        invalid or a problem is flagged.
        """
    )

    @Argument(help: "A blob file, '-' for standard input, or a service's control mount.")
    var source: String

    @Option(help: "Scratch as ADDRESS+LENGTH (e.g. 0x100000+0x4000000), to flag ranges inside it.")
    var scratch: String?

    @Option(help: "text or json.")
    var format: OutputFormat = .text

    @Flag(
      help:
        "With a control mount M: decode its stateless description (kernel/kho/preservation/dt) instead of the serialized blob."
    )
    var stateless = false

    func run() throws {
      var scratchRange: KHORange?
      let blobPath: String
      if FileIO.isDirectory(source) && stateless {
        blobPath = source + "/kernel/kho/preservation/dt"
      } else if FileIO.isDirectory(source) {
        blobPath = source + "/kernel/kho/dt"
        scratchRange = try? ControlFiles(mount: source).scratch()
      } else {
        blobPath = source
      }
      if let scratch {
        guard let parsed = KHORange(parsing: scratch) else {
          throw ValidationError("--scratch must be ADDRESS+LENGTH, e.g. 0x100000+0x4000000")
        }
        scratchRange = parsed
      }
      let tree = try DT.open(blobPath)
      let report = KHOBlobReport(tree: tree, scratch: scratchRange)
      print(format == .json ? report.json : report.text, terminator: "")
      if !report.problems.isEmpty { throw ExitCode(1) }
    }
  }
}

/// An address range of the arena (or of physical memory, for kernel blobs).
struct KHORange: Equatable {
  var address: UInt64
  var length: UInt64
  var end: UInt64 { address &+ length }

  init(address: UInt64, length: UInt64) {
    self.address = address
    self.length = length
  }

  /// `ADDRESS+LENGTH`, each in C notation (`0x` hex, leading `0` octal, decimal).
  init?(parsing text: String) {
    let parts = text.split(separator: "+")
    guard parts.count == 2, let a = parseCNumber(parts[0]), let l = parseCNumber(parts[1]) else {
      return nil
    }
    self.init(address: a, length: l)
  }

  var text: String { "0x\(String(address, radix: 16))+0x\(String(length, radix: 16))" }

  func overlaps(_ other: KHORange) -> Bool {
    length > 0 && other.length > 0 && address < other.end && other.address < end
  }
}

func parseCNumber(_ s: Substring) -> UInt64? {
  let t = s.trimmingWhitespace()
  if t.hasPrefix("0x") || t.hasPrefix("0X") { return UInt64(t.dropFirst(2), radix: 16) }
  if t.hasPrefix("0") && t.count > 1 { return UInt64(t.dropFirst(), radix: 8) }
  return UInt64(t)
}

extension Substring {
  func trimmingWhitespace() -> Substring {
    var s = self
    while let f = s.first, f == " " || f == "\n" || f == "\t" { s = s.dropFirst() }
    while let l = s.last, l == " " || l == "\n" || l == "\t" { s = s.dropLast() }
    return s
  }
}

/// What `decode` found in a blob.
struct KHOBlobReport {
  struct Node {
    var path: String
    var compatible: [String]
    var ranges: [KHORange]
    /// Mainline: the address of the subsystem's own FDT.
    var subFDT: UInt64?
    /// Mainline kho-v4: `preserved-data` and `blob-size` of a sub-blob.
    var subBlob: KHORange?
    var notes: [String]
  }

  var compatible: [String]
  var preservedMemoryMap: UInt64?
  var nodes: [Node] = []
  var problems: [String] = []
  var scratch: KHORange?
  var size: UInt32

  var totalBytes: UInt64 { nodes.reduce(0) { $0 + $1.ranges.reduce(0) { $0 + $1.length } } }
  var rangeCount: Int { nodes.reduce(0) { $0 + $1.ranges.count } }

  init(tree: FlattenedDeviceTree, scratch: KHORange?) {
    self.scratch = scratch
    self.size = tree.header.totalSize
    let root = tree.root
    compatible = root.property("compatible")?.strings ?? []
    if compatible != ["kho-v1"] && compatible != ["kho-v4"] {
      problems.append(
        "root compatible is \(compatible.map { "\"\($0)\"" }.joined(separator: ", ")), expected \"kho-v1\" or \"kho-v4\""
      )
    }
    preservedMemoryMap = root.property("preserved-memory-map")?.native(UInt64.self)?.first
    collect(root, path: "")
    flagOverlaps()
  }

  private mutating func collect(_ node: FDTNode, path: String) {
    var entry = Node(
      path: path.isEmpty ? "/" : path, compatible: [], ranges: [], subFDT: nil, subBlob: nil,
      notes: [])
    var blobAddress: UInt64?
    var blobSize: UInt64?
    for property in node.properties {
      switch property.name {
      case "compatible":
        entry.compatible = property.strings ?? []
      case "mem":
        guard let words = property.native(UInt64.self), words.count % 2 == 0 else {
          entry.notes.append(
            "mem of \(property.value.count) bytes is not a multiple of 16: ignored, as the kernel does"
          )
          continue
        }
        for i in stride(from: 0, to: words.count, by: 2) {
          entry.ranges.append(KHORange(address: words[i], length: words[i + 1]))
        }
      case "fdt":
        entry.subFDT = property.native(UInt64.self)?.first
      case "preserved-data":
        blobAddress = property.value.count == 8 ? property.native(UInt64.self)?.first : nil
        if blobAddress == nil { entry.notes.append("preserved-data is not one u64") }
      case "blob-size":
        blobSize = property.value.count == 8 ? property.native(UInt64.self)?.first : nil
        if blobSize == nil { entry.notes.append("blob-size is not one u64") }
      default:
        break
      }
    }
    if let blobAddress, let blobSize {
      entry.subBlob = KHORange(address: blobAddress, length: blobSize)
    } else if (blobAddress == nil) != (blobSize == nil) {
      problems.append("\(entry.path): a sub-blob needs both preserved-data and blob-size")
    }
    if !entry.ranges.isEmpty || entry.subFDT != nil || entry.subBlob != nil
      || !entry.compatible.isEmpty || path.isEmpty
    {
      nodes.append(entry)
    }
    for child in node.children {
      collect(child, path: path + "/" + child.name)
    }
  }

  private mutating func flagOverlaps() {
    var all: [(KHORange, String)] = []
    for node in nodes {
      for r in node.ranges {
        if r.end < r.address { problems.append("\(node.path): range \(r.text) overflows") }
        if let scratch, r.overlaps(scratch) {
          problems.append("\(node.path): range \(r.text) falls in scratch \(scratch.text)")
        }
        all.append((r, node.path))
      }
    }
    all.sort { $0.0.address < $1.0.address }
    for i in all.indices.dropFirst() where all[i - 1].0.overlaps(all[i].0) {
      problems.append("\(all[i - 1].1) \(all[i - 1].0.text) overlaps \(all[i].1) \(all[i].0.text)")
    }
  }

  var text: String {
    var out =
      "KHO blob: \(size) bytes, compatible \(compatible.map { "\"\($0)\"" }.joined(separator: ", "))\n"
    if let map = preservedMemoryMap {
      out += "preserved-memory-map: 0x\(String(map, radix: 16)) (mainline layout)\n"
    }
    if let scratch { out += "scratch: \(scratch.text)\n" }
    for node in nodes where node.path != "/" || !node.ranges.isEmpty {
      let compat =
        node.compatible.isEmpty
        ? "" : "  \(node.compatible.map { "\"\($0)\"" }.joined(separator: ", "))"
      out += "\(node.path)\(compat)\n"
      for r in node.ranges {
        out += "  mem \(r.text)  (\(humanBytes(r.length)))\n"
      }
      if let fdt = node.subFDT { out += "  fdt at 0x\(String(fdt, radix: 16))\n" }
      if let blob = node.subBlob {
        out += "  sub-blob \(blob.text)  (\(humanBytes(blob.length)))\n"
      }
      for note in node.notes { out += "  note: \(note)\n" }
    }
    out +=
      "total preserved: \(totalBytes) bytes (\(humanBytes(totalBytes))) in \(rangeCount) ranges\n"
    for p in problems { out += "problem: \(p)\n" }
    return out
  }

  var json: String {
    func str(_ s: String) -> String { jsonString(s) }
    let nodesJSON = nodes.map { n in
      let ranges = n.ranges.map { "{\"address\":\($0.address),\"length\":\($0.length)}" }.joined(
        separator: ",")
      let fdt =
        (n.subFDT.map { ",\"fdt\":\($0)" } ?? "")
        + (n.subBlob.map { ",\"blob\":{\"address\":\($0.address),\"length\":\($0.length)}" } ?? "")
      return
        "{\"path\":\(str(n.path)),\"compatible\":[\(n.compatible.map(str).joined(separator: ","))],"
        + "\"mem\":[\(ranges)]\(fdt),\"notes\":[\(n.notes.map(str).joined(separator: ","))]}"
    }.joined(separator: ",")
    let scratchJSON =
      scratch.map { "{\"address\":\($0.address),\"length\":\($0.length)}" } ?? "null"
    let map = preservedMemoryMap.map(String.init) ?? "null"
    return "{\"size\":\(size),\"compatible\":[\(compatible.map(str).joined(separator: ","))],"
      + "\"preservedMemoryMap\":\(map),\"scratch\":\(scratchJSON),\"nodes\":[\(nodesJSON)],"
      + "\"totalPreservedBytes\":\(totalBytes),\"problems\":[\(problems.map(str).joined(separator: ","))]}\n"
  }
}

func humanBytes(_ n: UInt64) -> String {
  let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
  var value = Double(n)
  var unit = 0
  while value >= 1024 && unit < units.count - 1 {
    value /= 1024
    unit += 1
  }
  if unit == 0 { return "\(n) B" }
  let rounded = (value * 10).rounded() / 10
  return "\(rounded) \(units[unit])"
}

func jsonString(_ s: String) -> String {
  var out = "\""
  for u in s.unicodeScalars {
    switch u {
    case "\"": out += "\\\""
    case "\\": out += "\\\\"
    case "\n": out += "\\n"
    case "\t": out += "\\t"
    default:
      if u.value < 0x20 {
        let h = String(u.value, radix: 16)
        out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
      } else {
        out.unicodeScalars.append(u)
      }
    }
  }
  return out + "\""
}
