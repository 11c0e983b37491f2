import Testing

@testable import KHOControlFS

@Suite struct ControlTreeTests {
  let file = ControlFile.attribute(mode: 0o400) { [] }

  @Test func nodeIDsDependOnlyOnPaths() {
    let small = ControlTree(["kernel/kho/active": file])
    let large = ControlTree(["kernel/kho/active": file, "kernel/a": file, "firmware/kho/dt": file])
    let id = ControlTree.nodeID(path: "kernel/kho/active", isDirectory: false)
    #expect(small.nodes[id]?.path == "kernel/kho/active")
    #expect(large.nodes[id]?.path == "kernel/kho/active")
    #expect(Set(large.nodes.keys).count == large.nodes.count)
    #expect(
      ControlTree.nodeID(path: "kernel", isDirectory: true)
        != ControlTree.nodeID(path: "kernel", isDirectory: false))
  }

  @Test func directoriesListChildrenSorted() {
    let tree = ControlTree(["k/b": file, "k/a": file, "k/c/d": file])
    #expect(tree.lookup("k", in: ControlTree.rootID)?.path == "k")
    let k = ControlTree.nodeID(path: "k", isDirectory: true)
    guard case .directory(let children) = tree.nodes[k]?.kind else {
      Issue.record("k is not a directory")
      return
    }
    #expect(children.map(\.name) == ["a", "b", "c"])
  }

  @Test func attributeSlicesAFreshShow() throws {
    let file = ControlFile.attribute(mode: 0o400) { Array("0xa00000\n".utf8) }
    #expect(try file.read?(0, 4096) == Array("0xa00000\n".utf8))
    #expect(try file.read?(2, 3) == Array("a00".utf8))
    #expect(try file.read?(9, 10) == [])
    #expect(try file.read?(100, 10) == [])
  }
}
