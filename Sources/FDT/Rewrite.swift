extension FlattenedDeviceTree {
  /// The same tree written anew in `layout`: reservations, nodes and
  /// properties in order, NOPs dropped, the boot CPU kept. In dtc's layout,
  /// a redundant `name` property is dropped too, as dtc does.
  ///
  /// ```swift
  /// let tree = try FlattenedDeviceTree(bytes: blob)
  /// let asDTC = try tree.rewritten(layout: .dtc)  // == `dtc -I dtb -O dtb`
  /// ```
  public func rewritten(layout: FDTWriter.Layout) throws(FDTError) -> [UInt8] {
    var writer = FDTWriter(layout: layout)
    writer.bootCPUID = header.bootCPUID
    for entry in reservations {
      try writer.addReservation(address: entry.address, size: entry.size)
    }
    var names = DTCNameProperties()
    try walk { (event) throws(FDTError) in
      switch event {
      case .beginNode(let node):
        let name = node.name
        names.enter(name)
        try writer.beginNode(name)
      case .property(let property):
        if layout == .dtc && names.drops(property, named: property.name) { return }
        try property.withValueBytes { (value) throws(FDTError) in
          try writer.property(property.name, count: value.count) { $0.copyMemory(from: value) }
        }
      case .endNode:
        names.leave()
        try writer.endNode()
      }
    }
    return try writer.finish()
  }
}
