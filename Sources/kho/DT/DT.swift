import ArgumentParser
import FDT

/// `kho dt`: flattened device tree blobs.
struct DT: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "dt",
    abstract: "Check, print and convert flattened device tree blobs (DTB).",
    subcommands: [Dump.self, Check.self, Convert.self, Decode.self, Sample.self]
  )
}

extension DT {
  /// Reads and validates a blob, turning failures into exit status 1 with
  /// a message that names the file and the offset.
  static func open(_ path: String) throws -> FlattenedDeviceTree {
    let bytes: [UInt8]
    do {
      bytes = try FileIO.read(path)
    } catch {
      FileIO.warn("kho: \(error)")
      throw ExitCode(1)
    }
    do {
      return try FlattenedDeviceTree(bytes: bytes)
    } catch {
      FileIO.warn("kho: \(path == "-" ? "<stdin>" : path): \(error)")
      throw ExitCode(1)
    }
  }
}
