import ArgumentParser
import FDT

extension FDTWriter.Layout: ExpressibleByArgument {}

extension DT {
  /// `kho dt convert IN -o OUT --layout dtc|libfdt`.
  struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Rewrite a blob in the byte layout of dtc or of libfdt's sequential writer.",
      discussion: """
        'dtc' gives the bytes of 'dtc -I dtb -O dtb' (reservation map at 40, \
        strings in first-use order); 'libfdt' those of libfdt's fdt_create ... \
        fdt_finish and pylibfdt's FdtSw (reservation map at 48, strings newest \
        first). NOP tokens are dropped; the tree, the reservations and the boot \
        CPU are kept.
        """
    )

    @Argument(help: "The blob to convert ('-' for standard input).")
    var input: String

    @Option(name: .shortAndLong, help: "Where to write the result ('-' for standard output).")
    var output: String

    @Option(help: "The layout to write: dtc or libfdt.")
    var layout: FDTWriter.Layout = .dtc

    func run() throws {
      let tree = try DT.open(input)
      do {
        try FileIO.write(tree.rewritten(layout: layout), to: output)
      } catch {
        FileIO.warn("kho: \(error)")
        throw ExitCode(1)
      }
    }
  }
}
