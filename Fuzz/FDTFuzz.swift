// libFuzzer entry for the FDT reader (and, through round-trips, the writer).
//
// Compiled with the FDT sources into one module by Scripts/fuzz.sh:
//   swiftc -sanitize=fuzzer,address -parse-as-library -O \
//     Sources/FDT/*.swift Fuzz/FDTFuzz.swift -o fdt-fuzz
//
// Any input may be refused with an FDTError; none may crash, hang, read out
// of bounds, or yield a tree whose rewrite does not validate or differs.

@_cdecl("LLVMFuzzerTestOneInput")
public func fdtFuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
  let bytes = [UInt8](UnsafeBufferPointer(start: data, count: size))
  // The non-copying check must agree with init(bytes:).
  let quick = bytes.withUnsafeBytes { raw -> FDTError? in
    do throws(FDTError) {
      try FlattenedDeviceTree.validate(raw)
      return nil
    } catch {
      return error
    }
  }
  let tree: FlattenedDeviceTree
  do {
    tree = try FlattenedDeviceTree(bytes: bytes)
  } catch {
    guard let quick, quick == error else {
      fatalError("validate(_:) and init(bytes:) disagree: \(String(describing: quick)) vs \(error)")
    }
    if let offset = error.offset, offset < 0 || offset > max(size, 0) + 16 {
      fatalError("error offset \(offset) outside a blob of \(size) bytes: \(error)")
    }
    return 0
  }
  guard quick == nil else { fatalError("validate(_:) refused a tree init(bytes:) accepted") }
  exercise(tree)
  return 0
}

/// One step of a walk, reduced to comparable values.
struct Step: Equatable {
  enum Kind: Equatable { case begin, property, end }
  var kind: Kind
  var name: String
  var value: [UInt8]
}

func steps(_ tree: FlattenedDeviceTree) -> [Step] {
  var out: [Step] = []
  tree.walk { event in
    switch event {
    case .beginNode(let node): out.append(Step(kind: .begin, name: node.name, value: []))
    case .property(let p): out.append(Step(kind: .property, name: p.name, value: Array(p.value)))
    case .endNode: out.append(Step(kind: .end, name: "", value: []))
    }
  }
  return out
}

func exercise(_ tree: FlattenedDeviceTree) {
  _ = tree.reservations
  _ = tree.nodeCount
  _ = tree.propertyCount

  // Walk, reading every property every way, and collect a few paths.
  var path: [String] = []
  var paths: [String] = []
  var nodes = 0
  var properties = 0
  var depth = 0
  tree.walk { event in
    switch event {
    case .beginNode(let node):
      nodes += 1
      depth += 1
      if depth > 1 { path.append(node.name) }
      if paths.count < 8 { paths.append("/" + path.joined(separator: "/")) }
      if nodes <= 64 {
        // Subnode and property lists from the node itself.
        for child in node.children { _ = child.name }
        for p in node.properties { _ = node.property(p.name) }
      }
    case .property(let p):
      properties += 1
      let value = p.value
      precondition(value.count == p.valueRange.count)
      precondition(p.withValueBytes { $0.count } == value.count)
      _ = p.name
      _ = p.string
      _ = p.strings
      _ = p.cells
      _ = p.cells64
      _ = p.native(UInt64.self)
      _ = p.native(UInt16.self)
    case .endNode:
      depth -= 1
      if depth >= 1 { path.removeLast() }
    }
  }
  precondition(depth == 0, "walk left \(depth) nodes open")
  precondition(nodes == tree.nodeCount, "walk saw \(nodes) nodes, tree counts \(tree.nodeCount)")
  precondition(properties == tree.propertyCount)

  // Lookups by path. Node names may repeat among siblings (libfdt and this
  // reader accept that; dtc does not), so a path taken from the walk may
  // lead elsewhere: only check that what is found carries the name asked.
  for p in paths + ["/", "/chosen", "/soc/serial", "/a/b/c", "//x", "relative"] {
    guard let found = tree.node(atPath: p) else { continue }
    if let last = p.split(separator: "/").last {
      let name = found.name
      precondition(
        name == last || name.hasPrefix(last + "@"), "path \(p) found a node named \(name)")
    } else {
      precondition(found.offset == tree.root.offset)
    }
  }

  // Round-trip through the writer in both layouts: the result validates,
  // walks the same, and rewriting it again changes nothing.
  let original = steps(tree)
  for layout in FDTWriter.Layout.allCases {
    let blob: [UInt8]
    do {
      blob = try tree.rewritten(layout: layout)
    } catch {
      fatalError("rewriting a valid tree as \(layout) failed: \(error)")
    }
    let again: FlattenedDeviceTree
    do {
      again = try FlattenedDeviceTree(bytes: blob)
    } catch {
      fatalError("the \(layout) rewrite does not validate: \(error)")
    }
    precondition(steps(again) == original, "the \(layout) rewrite walks differently")
    precondition(again.reservations == tree.reservations)
    do {
      let twice = try again.rewritten(layout: layout)
      precondition(twice == blob, "rewriting the \(layout) rewrite changed its bytes")
    } catch {
      fatalError("second \(layout) rewrite failed: \(error)")
    }
  }
}
