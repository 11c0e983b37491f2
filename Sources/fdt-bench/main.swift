// Side-by-side benchmark of the FDT module against Debian's libfdt (C).
//
//   swift run -c release fdt-bench [--quick] [--reps N]
//
// a. writing a 10,000-node tree, 5 properties per node, libfdt layout;
// b. writing 30,000 distinct property names (libfdt once: it is quadratic);
// c. validating and walking a 100,000-node blob.
//
// Both sides start from the same precomputed names and values; outputs of
// the writers are compared byte for byte.

import CLibFDT
import FDT

#if canImport(Glibc)
  import Glibc
#endif

// MARK: - Options

struct Options {
  var quick = false
  var reps = 11
  /// Run only these cases ("a", "b", "c"), for profiling.
  var only: Set<String> = ["a", "b", "c"]
  /// Instead of timing: write this many random trees with both writers and
  /// compare (libfdt layout); dtc-layout blobs go to `verifyDirectory`.
  var verify = 0
  var verifyDirectory: String? = nil

  init(_ arguments: [String]) {
    var it = arguments.dropFirst().makeIterator()
    while let arg = it.next() {
      switch arg {
      case "--quick": quick = true
      case "--verify":
        guard let n = it.next().flatMap({ Int($0) }), n > 0 else { usage() }
        verify = n
      case "--verify-dir":
        guard let d = it.next() else { usage() }
        verifyDirectory = d
      case "--only":
        guard let list = it.next() else { usage() }
        only = Set(list.split(separator: ",").map(String.init))
      case "--reps":
        guard let n = it.next().flatMap({ Int($0) }), n > 0 else { usage() }
        reps = n
      default: usage()
      }
    }
  }

  func usage() -> Never {
    print("usage: fdt-bench [--quick] [--reps N] [--only a,b,c]")
    print("  --quick   10,000 distinct names in (b) instead of 30,000, 5 repetitions")
    exit(2)
  }
}

var options = Options(CommandLine.arguments)
if options.verify > 0 {
  exit(verifyRandomTrees(options.verify, directory: options.verifyDirectory))
}
if options.quick && !CommandLine.arguments.contains("--reps") { options.reps = 5 }

// MARK: - Timing

@inline(never) @_optimize(none)
func blackHole<T>(_ value: T) {}

struct Stats {
  var samples: [Duration]
  var median: Duration {
    let s = samples.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
  }
  var min: Duration { samples.min()! }
}

func measure(_ reps: Int, _ body: () -> Void) -> Stats {
  let clock = ContinuousClock()
  body()  // warm-up, not counted
  var samples: [Duration] = []
  for _ in 0..<reps {
    samples.append(clock.measure(body))
  }
  return Stats(samples: samples)
}

/// Both sides, repetitions interleaved (ours, theirs, ours, ...) so that
/// load from other processes falls on both alike.
func measurePair(_ reps: Int, _ ours: () -> Void, _ theirs: () -> Void) -> (Stats, Stats) {
  let clock = ContinuousClock()
  ours()  // warm-up, not counted
  theirs()
  var a: [Duration] = []
  var b: [Duration] = []
  for _ in 0..<reps {
    a.append(clock.measure(ours))
    b.append(clock.measure(theirs))
  }
  return (Stats(samples: a), Stats(samples: b))
}

func measureOnce(_ body: () -> Void) -> Stats {
  Stats(samples: [ContinuousClock().measure(body)])
}

func ms(_ d: Duration) -> Double {
  let (s, atto) = d.components
  return Double(s) * 1e3 + Double(atto) * 1e-15
}

func fmt(_ value: Double, _ decimals: Int = 2) -> String {
  var s = String(Int((value * pow(10, Double(decimals))).rounded()))
  while s.count <= decimals { s = "0" + s }
  if decimals > 0 { s.insert(".", at: s.index(s.endIndex, offsetBy: -decimals)) }
  return s
}

struct Row {
  var name: String
  var ours: Stats
  var libfdt: Stats
  var note: String
}
nonisolated(unsafe) var rows: [Row] = []
nonisolated(unsafe) var failures = 0

func report(_ row: Row) {
  rows.append(row)
  let ratio = ms(row.libfdt.median) / ms(row.ours.median)
  print(
    "  \(row.name): FDT median \(fmt(ms(row.ours.median), 3)) ms (min \(fmt(ms(row.ours.min), 3))),"
      + " libfdt median \(fmt(ms(row.libfdt.median), 3)) ms (min \(fmt(ms(row.libfdt.min), 3)));"
      + " libfdt/FDT = \(fmt(ratio))x  \(row.note)")
}

// MARK: - Data shared by both sides

/// NUL-terminated C strings and raw values packed in one buffer.
struct Pool {
  var bytes: [UInt8] = []
  /// Adds `data` (plus a NUL if `nul`) and returns its offset.
  mutating func add(_ data: some Sequence<UInt8>, nul: Bool) -> Int32 {
    let at = Int32(bytes.count)
    bytes.append(contentsOf: data)
    if nul { bytes.append(0) }
    return at
  }
}

func bigEndianBytes(_ cells: [UInt32]) -> [UInt8] {
  cells.flatMap { c in
    [UInt8(c >> 24), UInt8((c >> 16) & 0xff), UInt8((c >> 8) & 0xff), UInt8(c & 0xff)]
  }
}

/// A tree of `1 + buses * (1 + devices)` nodes: the root, `buses` bus
/// nodes, each with `devices` device nodes; every node has the same five
/// properties (two strings, two cell lists, bytes).
struct TreeData {
  let buses: Int
  let devices: Int
  var nodeCount: Int { 1 + buses * (1 + devices) }

  // Swift side.
  var names: [String] = []
  var compatible: [String] = []
  var reg: [[UInt32]] = []
  var status: [String] = []
  var interrupts: [[UInt32]] = []
  var mac: [[UInt8]] = []

  // C side: offsets into `pool` (values with their lengths).
  struct CNode {
    var name: Int32
    var compatible: Int32
    var compatibleLength: Int32
    var reg: Int32
    var regLength: Int32
    var status: Int32
    var statusLength: Int32
    var interrupts: Int32
    var interruptsLength: Int32
    var mac: Int32
    var macLength: Int32
  }
  var pool = Pool()
  var cNodes: [CNode] = []
  var propertyNames: Int32 = 0  // offsets of the 5 names, consecutive C strings
  var propertyNameOffsets: [Int32] = []

  static let propertyNameList = ["compatible", "reg", "status", "interrupts", "local-mac-address"]

  init(buses: Int, devices: Int) {
    self.buses = buses
    self.devices = devices
    for name in Self.propertyNameList {
      propertyNameOffsets.append(pool.add(name.utf8, nul: true))
    }
    func add(_ name: String, _ i: Int) {
      let c = "vendor,device-\(i % 97)"
      let r: [UInt32] = [UInt32(truncatingIfNeeded: i) &* 0x1000, 0x1000]
      let s = i % 5 == 0 ? "disabled" : "okay"
      let irq: [UInt32] = [0, UInt32(i % 224), 4]
      let m: [UInt8] = [
        0x02, 0, 0, UInt8((i >> 16) & 0xff), UInt8((i >> 8) & 0xff), UInt8(i & 0xff),
      ]
      names.append(name)
      compatible.append(c)
      reg.append(r)
      status.append(s)
      interrupts.append(irq)
      mac.append(m)
      let rb = bigEndianBytes(r)
      let ib = bigEndianBytes(irq)
      cNodes.append(
        CNode(
          name: pool.add(name.utf8, nul: true),
          compatible: pool.add(c.utf8, nul: true), compatibleLength: Int32(c.utf8.count + 1),
          reg: pool.add(rb, nul: false), regLength: Int32(rb.count),
          status: pool.add(s.utf8, nul: true), statusLength: Int32(s.utf8.count + 1),
          interrupts: pool.add(ib, nul: false), interruptsLength: Int32(ib.count),
          mac: pool.add(m, nul: false), macLength: Int32(m.count)))
    }
    add("", 0)
    var i = 1
    for b in 0..<buses {
      add("bus@\(String(b, radix: 16))", i)
      i += 1
      for d in 0..<devices {
        add("device@\(String(d, radix: 16))", i)
        i += 1
      }
    }
  }

  /// Our writer.
  func writeSwift() -> [UInt8] {
    var w = FDTWriter(layout: .libfdt)
    func props(_ i: Int) {
      try! w.property("compatible", string: compatible[i])
      try! w.property("reg", cells: reg[i])
      try! w.property("status", string: status[i])
      try! w.property("interrupts", cells: interrupts[i])
      try! w.property("local-mac-address", bytes: mac[i])
    }
    try! w.beginNode(names[0])
    props(0)
    var i = 1
    for _ in 0..<buses {
      try! w.beginNode(names[i])
      props(i)
      i += 1
      for _ in 0..<devices {
        try! w.beginNode(names[i])
        props(i)
        try! w.endNode()
        i += 1
      }
      try! w.endNode()
    }
    try! w.endNode()
    return try! w.finish()
  }

  /// libfdt's sequential writer, into a buffer of `capacity` bytes.
  func writeC(capacity: Int) -> [UInt8] {
    pool.bytes.withUnsafeBufferPointer { poolBuffer in
      let base = UnsafeRawPointer(poolBuffer.baseAddress!)
      func cstr(_ at: Int32) -> UnsafePointer<CChar> {
        (base + Int(at)).assumingMemoryBound(to: CChar.self)
      }
      let buf = malloc(capacity)!
      defer { free(buf) }
      func check(_ rc: CInt) {
        if rc != 0 { fatalError("libfdt: \(String(cString: fdt_strerror(rc)))") }
      }
      let pn = propertyNameOffsets
      let nCompatible = cstr(pn[0])
      let nReg = cstr(pn[1])
      let nStatus = cstr(pn[2])
      let nInterrupts = cstr(pn[3])
      let nMac = cstr(pn[4])
      cNodes.withUnsafeBufferPointer { nodes in
        func props(_ n: CNode) {
          check(fdt_property(buf, nCompatible, base + Int(n.compatible), n.compatibleLength))
          check(fdt_property(buf, nReg, base + Int(n.reg), n.regLength))
          check(fdt_property(buf, nStatus, base + Int(n.status), n.statusLength))
          check(fdt_property(buf, nInterrupts, base + Int(n.interrupts), n.interruptsLength))
          check(fdt_property(buf, nMac, base + Int(n.mac), n.macLength))
        }
        check(fdt_create(buf, CInt(capacity)))
        check(fdt_finish_reservemap(buf))
        check(fdt_begin_node(buf, cstr(nodes[0].name)))
        props(nodes[0])
        var i = 1
        for _ in 0..<buses {
          check(fdt_begin_node(buf, cstr(nodes[i].name)))
          props(nodes[i])
          i += 1
          for _ in 0..<devices {
            check(fdt_begin_node(buf, cstr(nodes[i].name)))
            props(nodes[i])
            check(fdt_end_node(buf))
            i += 1
          }
          check(fdt_end_node(buf))
        }
        check(fdt_end_node(buf))
        check(fdt_finish(buf))
      }
      return copyOut(buf)
    }
  }
}

/// The bytes of a finished libfdt blob (its `totalsize`).
func copyOut(_ buf: UnsafeMutableRawPointer) -> [UInt8] {
  let total = Int(UInt32(bigEndian: buf.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
  return [UInt8](UnsafeRawBufferPointer(start: buf, count: total))
}

func compare(_ what: String, _ ours: [UInt8], _ theirs: [UInt8]) -> String {
  if ours == theirs {
    print("  \(what): outputs byte-identical (\(ours.count) bytes)")
    return "byte-identical, \(ours.count) bytes"
  }
  failures += 1
  let firstDiff = zip(ours, theirs).enumerated().first { $0.element.0 != $0.element.1 }?.offset
  print(
    "  \(what): OUTPUTS DIFFER: ours \(ours.count) bytes, libfdt \(theirs.count) bytes,"
      + " first difference at \(firstDiff.map(String.init) ?? "the end")")
  return "OUTPUTS DIFFER"
}

// MARK: - a. 10,000-node tree

print("fdt-bench: \(options.reps) repetitions after one warm-up (median, min)")
if options.only.contains("a") {
  let tree = TreeData(buses: 99, devices: 100)
  print("a. write a \(tree.nodeCount)-node tree, 5 properties per node (libfdt layout)")
  let capacity = 4 << 20
  let identity = compare("a", tree.writeSwift(), tree.writeC(capacity: capacity))
  let (ours, theirs) = measurePair(
    options.reps, { blackHole(tree.writeSwift()) }, { blackHole(tree.writeC(capacity: capacity)) })
  report(
    Row(
      name: "a. write \(tree.nodeCount) nodes × 5 properties", ours: ours, libfdt: theirs,
      note: identity))
}

// MARK: - b. many distinct names

if options.only.contains("b") {
  let count = options.quick ? 10_000 : 30_000
  print("b. write one node with \(count) distinct property names (libfdt runs once)")
  let names = (0..<count).map { "prop-\($0)" }
  var pool = Pool()
  let offsets = names.map { pool.add($0.utf8, nul: true) }
  let values = (0..<count).map { UInt32($0) }

  func writeSwift() -> [UInt8] {
    var w = FDTWriter(layout: .libfdt)
    try! w.beginNode("")
    for i in 0..<count {
      try! w.property(names[i], cells: [values[i]])
    }
    try! w.endNode()
    return try! w.finish()
  }
  func writeC() -> [UInt8] {
    let capacity = 4 << 20
    let buf = malloc(capacity)!
    defer { free(buf) }
    pool.bytes.withUnsafeBufferPointer { p in
      let base = UnsafeRawPointer(p.baseAddress!)
      precondition(fdt_create(buf, CInt(capacity)) == 0)
      precondition(fdt_finish_reservemap(buf) == 0)
      precondition(fdt_begin_node(buf, "") == 0)
      for i in 0..<count {
        var cell = values[i].bigEndian
        let name = (base + Int(offsets[i])).assumingMemoryBound(to: CChar.self)
        precondition(fdt_property(buf, name, &cell, 4) == 0)
      }
      precondition(fdt_end_node(buf) == 0)
      precondition(fdt_finish(buf) == 0)
    }
    return copyOut(buf)
  }
  let oursBlob = writeSwift()
  var theirsBlob: [UInt8] = []
  let theirs = measureOnce { theirsBlob = writeC() }
  let identity = compare("b", oursBlob, theirsBlob)
  let ours = measure(options.reps) { blackHole(writeSwift()) }
  report(
    Row(
      name: "b. write \(count) distinct names (libfdt: 1 run)", ours: ours, libfdt: theirs,
      note: identity))
}

// MARK: - c. validate + walk

if options.only.contains("c") {
  let tree = TreeData(buses: 369, devices: 270)
  let blob = tree.writeC(capacity: 64 << 20)
  print("c. validate + walk a \(tree.nodeCount)-node blob of \(blob.count) bytes")

  // libfdt: fdt_check_full, then every node's name and every property's
  // name and value.
  func checkC(_ p: UnsafeRawPointer) {
    let rc = fdt_check_full(p, blob.count)
    if rc != 0 { fatalError("fdt_check_full: \(String(cString: fdt_strerror(rc)))") }
  }
  func walkC(_ p: UnsafeRawPointer) -> Int {
    var sum = 0
    var depth: CInt = 0
    var node: CInt = 0
    while node >= 0 {
      var len: CInt = 0
      if let name = fdt_get_name(p, node, &len) {
        sum &+= Int(len) &+ Int(UInt8(bitPattern: name[0]))
      }
      var prop = fdt_first_property_offset(p, node)
      while prop >= 0 {
        var name: UnsafePointer<CChar>? = nil
        var vlen: CInt = 0
        if let value = fdt_getprop_by_offset(p, prop, &name, &vlen) {
          sum &+= strlen(name!) &+ Int(vlen)
          if vlen > 0 { sum &+= Int(value.load(as: UInt8.self)) }
        }
        prop = fdt_next_property_offset(p, prop)
      }
      node = fdt_next_node(p, node, &depth)
    }
    return sum
  }
  // Ours: FlattenedDeviceTree(bytes:), then walk.
  func walkSwift(_ tree: FlattenedDeviceTree) -> Int {
    var sum = 0
    tree.walk { event in
      switch event {
      case .beginNode(let node):
        let name = node.name
        sum &+= name.utf8.count &+ Int(name.utf8.first ?? 0)
      case .property(let property):
        sum &+= property.name.utf8.count
        property.withValueBytes { v in
          sum &+= v.count
          if !v.isEmpty { sum &+= Int(v[0]) }
        }
      case .endNode:
        break
      }
    }
    return sum
  }

  let cSum = blob.withUnsafeBytes { walkC($0.baseAddress!) }
  let swiftSum = walkSwift(try! FlattenedDeviceTree(bytes: blob))
  print(
    "  c: checksums libfdt \(cSum), FDT \(swiftSum)\(cSum == swiftSum ? " (equal)" : " DIFFER")")
  if cSum != swiftSum { failures += 1 }

  let (oursCheck, theirsCheck) = measurePair(
    options.reps, { blackHole(try! FlattenedDeviceTree(bytes: blob)) },
    { blob.withUnsafeBytes { checkC($0.baseAddress!) } })
  report(
    Row(
      name: "c1. validate \(tree.nodeCount) nodes", ours: oursCheck, libfdt: theirsCheck, note: ""))
  let opened = try! FlattenedDeviceTree(bytes: blob)
  let (oursWalk, theirsWalk) = measurePair(
    options.reps, { blackHole(walkSwift(opened)) },
    { blackHole(blob.withUnsafeBytes { walkC($0.baseAddress!) }) })
  report(
    Row(name: "c2. walk \(tree.nodeCount) nodes", ours: oursWalk, libfdt: theirsWalk, note: ""))
  let (ours, theirs) = measurePair(
    options.reps, { blackHole(walkSwift(try! FlattenedDeviceTree(bytes: blob))) },
    {
      blackHole(
        blob.withUnsafeBytes { raw in
          checkC(raw.baseAddress!)
          return walkC(raw.baseAddress!)
        })
    })
  report(
    Row(
      name: "c. validate + walk \(tree.nodeCount) nodes", ours: ours, libfdt: theirs,
      note: "same checksum"))
}

// MARK: - Table

print("")
print("| case | FDT median | FDT min | libfdt median | libfdt min | libfdt / FDT (median) |")
print("|---|---:|---:|---:|---:|---:|")
for r in rows {
  print(
    "| \(r.name) | \(fmt(ms(r.ours.median), 3)) ms | \(fmt(ms(r.ours.min), 3)) ms"
      + " | \(fmt(ms(r.libfdt.median), 3)) ms | \(fmt(ms(r.libfdt.min), 3)) ms"
      + " | \(fmt(ms(r.libfdt.median) / ms(r.ours.median)))× |")
}
fflush(nil)
exit(failures == 0 ? 0 : 1)

// MARK: - Verification mode

/// Random trees whose names share many suffixes, written by both writers.
/// Returns the number of mismatches.
func verifyRandomTrees(_ count: Int, directory: String?) -> Int32 {
  var rng = SplitMix(seed: 0x5eed)
  let pieces = ["reg", "a", "ba", "-reg", "interrupt", "s", "#", "cells", "x", "name", ""]
  var mismatches: Int32 = 0
  for t in 0..<count {
    // Events: (depth change, name, value) generated once, replayed twice.
    enum Op {
      case begin(String)
      case prop(String, [UInt8])
      case end
    }
    var ops: [Op] = [.begin("")]
    var depth = 1
    let steps = Int(rng.next() % 200)
    for _ in 0..<steps {
      switch rng.next() % 6 {
      case 0 where depth < 6:
        ops.append(.begin("n\(rng.next() % 50)@\(rng.next() % 4)"))
        depth += 1
      case 1 where depth > 1:
        ops.append(.end)
        depth -= 1
      default:
        var name = ""
        for _ in 0...(rng.next() % 4) { name += pieces[Int(rng.next() % UInt64(pieces.count))] }
        if name.isEmpty { name = "p" }
        let value = (0..<Int(rng.next() % 12)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        ops.append(.prop(name, value))
      }
    }
    for _ in 0..<depth { ops.append(.end) }
    // A property may not follow a subnode: drop those.
    var cleaned: [Op] = []
    var hadChild: [Bool] = []
    for op in ops {
      switch op {
      case .begin:
        if !hadChild.isEmpty { hadChild[hadChild.count - 1] = true }
        hadChild.append(false)
        cleaned.append(op)
      case .end:
        hadChild.removeLast()
        cleaned.append(op)
      case .prop:
        if hadChild.last == false { cleaned.append(op) }
      }
    }
    ops = cleaned
    func writeSwift(_ layout: FDTWriter.Layout, capacity: Int? = nil) throws(FDTError) -> [UInt8] {
      var w = FDTWriter(layout: layout, capacity: capacity)
      try w.addReservation(address: 0x1000, size: UInt64(t))
      var k = 0
      for op in ops {
        switch op {
        case .begin(let n): try w.beginNode(n)
        case .prop(let n, let v):
          if capacity != nil {
            // Attempts that cannot fit: must leave no trace.
            k += 1
            do {
              try w.property("never-fits-\(k)-" + n, bytes: [UInt8](repeating: 7, count: 1 << 16))
              fatalError("a property past the capacity was accepted")
            } catch  where error.kind == .noSpace {}
          }
          try w.property(n, bytes: v)
        case .end: try w.endNode()
        }
      }
      return try w.finish()
    }
    let buf = malloc(1 << 20)!
    defer { free(buf) }
    precondition(fdt_create(buf, 1 << 20) == 0)
    precondition(fdt_add_reservemap_entry(buf, 0x1000, UInt64(t)) == 0)
    precondition(fdt_finish_reservemap(buf) == 0)
    for op in ops {
      switch op {
      case .begin(let n): precondition(fdt_begin_node(buf, n) == 0)
      case .prop(let n, let v): precondition(fdt_property(buf, n, v, CInt(v.count)) == 0)
      case .end: precondition(fdt_end_node(buf) == 0)
      }
    }
    precondition(fdt_finish(buf) == 0)
    let reference = copyOut(buf)
    let ours = try! writeSwift(.libfdt)
    // + 4: `size` counts FDT_END even once finish() has appended it.
    let oursTight = try! writeSwift(.libfdt, capacity: ours.count + 4)
    if ours != reference || oursTight != reference {
      print(
        "tree \(t): libfdt layout differs (unlimited: \(ours == reference), at capacity: \(oursTight == reference))"
      )
      mismatches += 1
    }
    let dtcLayout = try! writeSwift(.dtc)
    let dtcTight = try! writeSwift(.dtc, capacity: dtcLayout.count + 4)
    if dtcLayout != dtcTight {
      print("tree \(t): dtc layout differs after failed attempts")
      mismatches += 1
    }
    if let directory {
      func save(_ bytes: [UInt8], _ path: String) {
        let f = fopen(path, "wb")!
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
        fclose(f)
      }
      save(reference, "\(directory)/\(t).libfdt.dtb")
      save(dtcLayout, "\(directory)/\(t).ours-dtc.dtb")
    }
  }
  print("verify: \(count) random trees, \(mismatches) mismatches")
  return mismatches == 0 ? 0 : 1
}

struct SplitMix {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9e37_79b9_7f4a_7c15
    var z = state
    z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
    z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
    return z ^ (z >> 31)
  }
}
