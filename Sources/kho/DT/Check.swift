import ArgumentParser
import FDT

extension DT {
  /// `kho dt check FILE`: full validation.
  struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract:
        "Validate a blob: header, blocks, reservation map, tokens, nesting, names, strings.",
      discussion: """
        Exits 0 and prints a one-line summary when the blob is valid; exits 1 \
        and prints the first problem with its byte offset otherwise.
        """
    )

    @Argument(help: "The blob to check ('-' for standard input).")
    var file: String

    @Flag(name: .shortAndLong, help: "Print nothing on success.")
    var quiet = false

    func run() throws {
      let tree = try DT.open(file)
      if !quiet {
        let h = tree.header
        print(
          "\(file == "-" ? "<stdin>" : file): valid: version \(h.version), \(h.totalSize) bytes, "
            + "\(tree.nodeCount) nodes, \(tree.propertyCount) properties, "
            + "\(tree.reservations.count) memory reservations")
      }
    }
  }
}
