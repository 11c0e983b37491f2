extension FlattenedDeviceTree {
  /// The same tree written anew in `layout`: reservations, nodes and
  /// properties in order, NOPs dropped, the boot CPU kept.
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
    try walk { (event) throws(FDTError) in
      switch event {
      case .beginNode(let node):
        try writer.beginNode(node.name)
      case .property(let property):
        try property.withValueBytes { (value) throws(FDTError) in
          try writer.property(property.name, count: value.count) { $0.copyMemory(from: value) }
        }
      case .endNode:
        try writer.endNode()
      }
    }
    return try writer.finish()
  }
}
