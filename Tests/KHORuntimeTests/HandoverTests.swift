import Foundation
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The `kho-roundtrip` executable built beside this test bundle.
let roundTripPath: String = {
  let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
  return exe.deletingLastPathComponent().appendingPathComponent("kho-roundtrip").path
}()

/// Runs `arguments` and returns its exit status and everything written to
/// stdout, read until every process holding the pipe has gone (overlapped
/// handovers leave the later generations running after the first exits).
func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
  let process = Process()
  process.executableURL = URL(fileURLWithPath: roundTripPath)
  process.arguments = arguments
  let pipe = Pipe()
  process.standardOutput = pipe
  process.standardError = FileHandle.nullDevice
  try process.run()
  let data = pipe.fileHandleForReading.readDataToEndOfFile()
  process.waitUntilExit()
  return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

@Suite(.serialized) struct ExecRoundTripTests {
  init() {
    precondition(
      FileManager.default.isExecutableFile(atPath: roundTripPath),
      "build kho-roundtrip first (swift build)")
  }

  @Test(arguments: ["in-place", "overlapped"])
  func threeGenerationsKeepEveryByte(mode: String) throws {
    let (status, output) = try run(["--mode", mode, "--generations", "3", "--fill", "\(16 << 20)"])
    #expect(status == 0)
    // The last generation checked 16 MiB of pattern, the trace ring (one
    // record per generation), the same scratch and the same fd table size.
    let last = output.split(separator: "\n").last.map(String.init) ?? ""
    #expect(last.hasPrefix("OK generation=3 bytes=16777216 scratch="))
    #expect(last.hasSuffix("records=4"))
  }

  @Test(arguments: [
    ("record", "bad handover record: record says the arena has"),
    ("checksum", "bad handover record: checksum"),
    ("blob", "bad KHO blob: offset"),
    ("ranges", "bad mem cache: mem range 0x0+"),
    ("fd", "bad arena fd: fd 0 is"),
    ("fd-size", "bad arena fd: memfd"),
  ])
  func corruptHandoverStartsColdNamingTheError(kind: String, expected: String) throws {
    let (status, output) = try run(["--mode", "in-place", "--generations", "2", "--corrupt", kind])
    #expect(status == 3)
    #expect(output.hasPrefix("COLD \(expected)"), "\(output)")
  }

  @Test(arguments: [
    ("exec", "in-place", "execve(/nonexistent/kho-roundtrip): No such file or directory"),
    ("exec", "overlapped", "posix_spawn(/nonexistent/kho-roundtrip): No such file or directory"),
    ("crash", "overlapped", "closed the ready pipe before reporting ready; exit status 1"),
    ("hang", "overlapped", "was not ready within 0.5 seconds; killed"),
  ])
  func failedSuccessorRollsBackWithEverything(kind: String, mode: String, expected: String) throws {
    let (status, output) = try run(["--mode", mode, "--generations", "2", "--corrupt", kind])
    // Exit 5: the old image verified every byte after the rollback and
    // found KHO inactive again.
    #expect(status == 5)
    #expect(output.hasPrefix("ROLLBACK generation=0 active=false "), "\(output)")
    #expect(output.contains(expected), "\(output)")
  }
}

/// A client of the `--serve` line protocol.
struct LineClient {
  let port: UInt16

  enum Failure: Error {
    case refused
    case io(Int32)
  }

  func send(_ line: String) throws(Failure) -> String {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    let rc = withUnsafePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    if rc != 0 { throw errno == ECONNREFUSED ? .refused : .io(errno) }
    let request = Array((line + "\n").utf8)
    guard
      request.withUnsafeBytes({ Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) })
        == request.count
    else {
      throw .io(errno)
    }
    var reply: [UInt8] = []
    var byte: UInt8 = 0
    while read(fd, &byte, 1) == 1, byte != UInt8(ascii: "\n") { reply.append(byte) }
    return String(decoding: reply, as: UTF8.self)
  }
}

@Suite(.serialized) struct ListeningSocketHandoverTests {
  @Test(arguments: ["in-place", "overlapped"])
  func clientsNeverRefusedAndStateKept(mode: String) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: roundTripPath)
    process.arguments = ["--serve", "--mode", mode, "--fill", "\(1 << 20)"]
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    try process.run()
    var first = Data()
    while !first.contains(UInt8(ascii: "\n")) {
      first.append(pipe.fileHandleForReading.readData(ofLength: 1))
    }
    let port = try #require(
      UInt16(String(decoding: first, as: UTF8.self).split(separator: " ")[1].prefix { $0.isNumber })
    )
    let client = LineClient(port: port)
    defer { _ = try? client.send("QUIT") }

    #expect(try client.send("INC") == "counter=1")
    #expect(try client.send("INC") == "counter=2")

    // A second client connects over and over while the service hands over
    // three times; every connection must be served, none refused.
    let stop = ManagedAtomicFlag()
    let results = ResultsBox()
    let hammer = Thread {
      while !stop.isSet {
        do throws(LineClient.Failure) {
          let reply = try client.send("GET")
          results.record(reply.hasPrefix("gen=") ? .served : .other)
        } catch {
          results.record(error == .refused ? .refused : .other)
        }
      }
    }
    hammer.start()
    for generation in 1...3 {
      #expect(try client.send("UPGRADE") == "UPGRADED gen=\(generation)")
      #expect(try client.send("GET") == "gen=\(generation) counter=2")
    }
    let rollback = try client.send("UPGRADE-FAIL")
    #expect(rollback.hasPrefix("ROLLBACK starting the next image failed"))
    #expect(try client.send("INC") == "counter=3")
    stop.set()
    while !hammer.isFinished { sched_yield() }
    #expect(results.refused == 0)
    #expect(results.other == 0)
    #expect(results.served > 0)
  }
}

final class ManagedAtomicFlag: @unchecked Sendable {
  private let lock = NSLock()
  private var value = false
  var isSet: Bool { lock.withLock { value } }
  func set() { lock.withLock { value = true } }
}

final class ResultsBox: @unchecked Sendable {
  enum Kind { case served, refused, other }
  private let lock = NSLock()
  private var counts: [Kind: Int] = [:]
  func record(_ kind: Kind) { lock.withLock { counts[kind, default: 0] += 1 } }
  var served: Int { lock.withLock { counts[.served, default: 0] } }
  var refused: Int { lock.withLock { counts[.refused, default: 0] } }
  var other: Int { lock.withLock { counts[.other, default: 0] } }
}

extension LineClient.Failure: Equatable {}
