// `--serve`: a tiny line-protocol service whose counter lives in the arena,
// for the handover tests of listening sockets.
//
//   GET        -> "gen=<generation> counter=<n>\n"
//   INC        -> "counter=<n+1>\n"   (a mutation, refused while KHO is active)
//   UPGRADE    -> hands over; the *next* image answers "UPGRADED gen=<g>\n" on
//                 the same connection, which travels as the named fd "upgrader"
//   UPGRADE-FAIL -> hands over to a missing binary; answers "ROLLBACK ...\n"
//   QUIT       -> exits
//
// Connections are served one at a time: while the service hands over it
// does not accept, and new connections wait in the listen backlog.

import KHO
import KHORuntime

#if canImport(Glibc)
  import Glibc
#endif

struct LineService {
  let runtime: HandoverRuntime
  let listener: Int32
  let counter: UnsafeMutablePointer<UInt64>
  let args: RoundTrip.Arguments
  let handOver: (_ toMissingBinary: Bool) throws -> Void

  func serve() -> Never {
    if let upgrader = runtime.inherited["upgrader"] {
      reply(upgrader, "UPGRADED gen=\(runtime.kho.generation)\n")
      close(upgrader)
    }
    while true {
      let conn = accept(listener, nil, nil)
      if conn < 0 { continue }
      _ = fcntl(conn, F_SETFD, FD_CLOEXEC)
      handle(conn)
    }
  }

  private func handle(_ conn: Int32) {
    var closeAfter = true
    defer { if closeAfter { close(conn) } }
    guard let line = readLine(conn) else { return }
    switch line {
    case "GET":
      reply(conn, "gen=\(runtime.kho.generation) counter=\(counter.pointee)\n")
    case "INC":
      let value = try? runtime.kho.outgoing.withMutation { () -> UInt64 in
        counter.pointee += 1
        return counter.pointee
      }.get()
      reply(conn, value.map { "counter=\($0)\n" } ?? "BUSY\n")
    case "UPGRADE", "UPGRADE-FAIL":
      do {
        try runtime.register(conn, name: "upgrader")
        closeAfter = false
        try handOver(line == "UPGRADE-FAIL")
      } catch {
        runtime.unregister("upgrader")
        closeAfter = true
        reply(conn, "ROLLBACK \(error)\n")
      }
    case "QUIT":
      RoundTrip.control?.unmount()
      reply(conn, "BYE\n")
      exit(0)
    default:
      reply(conn, "ERROR\n")
    }
  }

  private func readLine(_ fd: Int32) -> String? {
    var bytes: [UInt8] = []
    while bytes.count < 256 {
      guard let c = try? FileDescriptor(rawValue: fd).read(upTo: 1).first else { return nil }
      if c == UInt8(ascii: "\n") { break }
      bytes.append(c)
    }
    return String(decoding: bytes, as: UTF8.self)
  }

  private func reply(_ fd: Int32, _ text: String) {
    _ = try? FileDescriptor(rawValue: fd).sendMessage(Array(text.utf8))
  }
}
