import ArgumentParser
import FDT

extension DT {
  /// `kho dt sample -o FILE`: a blob shaped like a service's KHO state.
  struct Sample: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract:
        "Write a sample KHO state blob (what a service's serialize produces) to try the other verbs on.",
      discussion: """
        The blob has the root's 'compatible = "kho-v1"', a cache subsystem \
        with native-endian 'mem' ranges and a format version, and a trace \
        ring buffer, in libfdt's layout as the KHO core writes it.
        """
    )

    @Option(name: .shortAndLong, help: "Where to write the blob ('-' for standard output).")
    var output: String

    @Option(help: "The layout to write: dtc or libfdt.")
    var layout: FDTWriter.Layout = .libfdt

    func run() throws {
      do {
        var w = FDTWriter(layout: layout)
        try w.beginNode("")
        try w.property("compatible", string: "kho-v1")
        try w.beginNode("kho-cache")
        try w.property("compatible", string: "kho-cache-v1")
        try w.property("format-version", native: [UInt32(1)])
        // struct kho_mem { u64 addr; u64 len; }[]: arena offsets.
        try w.property("mem", native: [UInt64(0x20_0000), 0x4000_0000, 0x4040_0000, 0x20_0000])
        try w.beginNode("index")
        try w.property("buckets", native: [UInt64(1 << 20)])
        try w.property("mem", native: [UInt64(0x4060_0000), 0x80_0000])
        try w.endNode()
        try w.endNode()
        try w.beginNode("ftrace")
        try w.property("compatible", string: "ftrace-v1")
        try w.property("events", strings: ["sched_switch", "kmalloc"])
        try w.property("mem", native: [UInt64(0x40e0_0000), 0x10_0000])
        try w.endNode()
        try w.endNode()
        try FileIO.write(w.finish(), to: output)
      } catch {
        FileIO.warn("kho: \(error)")
        throw ExitCode(1)
      }
    }
  }
}
