import ArgumentParser
import FDT

extension DT {
  /// `kho dt dump FILE`: the source form, as `dtc -I dtb -O dts` prints it.
  struct Dump: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Print a blob as device tree source, exactly as 'dtc -I dtb -O dts' does.",
      discussion: """
        Values carry no type in a blob; like dtc, strings, cells (<0x..>) and \
        bytes ([..]) are guessed from the bytes. The blob is validated first; \
        an invalid one is refused with the offset of the problem.
        """
    )

    @Argument(help: "The blob to print ('-' for standard input).")
    var file: String

    @Option(
      name: .shortAndLong,
      help: "Write the source here instead of standard output ('-' for standard output).")
    var output: String = "-"

    func run() throws {
      let tree = try DT.open(file)
      do {
        try FileIO.write(tree.sourceBytes, to: output)
      } catch {
        FileIO.warn("kho: \(error)")
        throw ExitCode(1)
      }
    }
  }
}
