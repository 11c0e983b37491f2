// A service that hands over to itself, generation after generation, and
// checks every preserved byte; the exec round-trip tests drive it.
//
//   kho-roundtrip [--generations N] [--fill BYTES] [--mode in-place|overlapped]
//                 [--corrupt record|fd|blob|ranges|exec] [--socket]
//
// Generation 0 starts cold, fills `--fill` bytes of arena memory with a
// pattern and creates a trace ring; every generation checks the pattern,
// the ring (one record per generation), that scratch did not move, and that
// its fd table has the size the first generation had; then hands over,
// until generation N prints `OK ...` and exits 0. A corruption is applied
// to the handover that generation 0 leaves; the next image must then start
// cold: it prints `COLD <reason>` and exits 3.

import KHO
import KHOExamples
import KHORuntime
import KHOServiceControl
import Logging

#if canImport(Glibc)
  import Glibc
#endif

@main
struct RoundTrip {
  /// Kept alive for the life of the process.
  nonisolated(unsafe) static var control: ServiceControl?

  static func main() {
    LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
    do {
      try run(Arguments(CommandLine.arguments))
    } catch {
      say("FAIL \(error)")
      exit(1)
    }
  }

  struct Failure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
  }

  struct Arguments {
    var generations: UInt64 = 3
    var fill: UInt64 = 8 << 20
    var overlapped = false
    var corrupt: String?
    /// Set by the previous generation: damage the incoming handover before
    /// booting, as corruption in transit would.
    var damage: String?
    var expectHandover = false
    var expectScratch: UInt64?
    var expectFDs: Int?
    var socket = false
    /// Serve the line protocol of Serve.swift on a listening socket.
    var serve = false
    /// Serve a control mount here (with --serve).
    var controlMount: String?
    var port: UInt16 = 0
    /// Boot, then never report ready (to test the overlapped timeout).
    var hang = false
    var executable = CommandLine.arguments[0]

    init(_ argv: [String]) throws {
      var i = 1
      func value() throws -> String {
        i += 1
        guard i < argv.count else { throw Failure("\(argv[i - 1]) needs a value") }
        return argv[i]
      }
      while i < argv.count {
        switch argv[i] {
        case "--generations": generations = UInt64(try value()) ?? 3
        case "--fill": fill = UInt64(try value()) ?? fill
        case "--mode": overlapped = try value() == "overlapped"
        case "--corrupt": corrupt = try value()
        case "--damage": damage = try value()
        case "--expect-handover": expectHandover = true
        case "--expect-scratch": expectScratch = UInt64(try value())
        case "--expect-fds": expectFDs = Int(try value())
        case "--socket": socket = true
        case "--hang": hang = true
        case "--serve": serve = true
        case "--control-mount": controlMount = try value()
        case "--port": port = UInt16(try value()) ?? 0
        case "--next": executable = try value()
        default: throw Failure("unknown argument \(argv[i])")
        }
        i += 1
      }
    }
  }

  static func run(_ args: Arguments) throws {
    if let damage = args.damage { try Corruption.damageIncoming(damage) }
    let runtime = try HandoverRuntime.boot(KHOOptions(arenaSize: 256 << 20, scratchSize: 4 << 20))
    let kho = runtime.kho
    if args.expectHandover && !kho.isKHOBoot {
      say("COLD \(kho.coldStartReason.map { "\($0)" } ?? "no handover")")
      exit(3)
    }
    if let expected = args.expectScratch, kho.scratch.lowerBound != expected {
      throw Failure("scratch moved from \(expected) to \(kho.scratch.lowerBound)")
    }
    let pattern = try Pattern.restoreOrCreate(kho, fill: args.fill)
    let ring = try TraceRing.restore(from: kho) ?? TraceRing.create(in: kho, capacity: 1024)
    let listener =
      try (args.socket || args.serve)
      ? (runtime.inherited["listen"] ?? listeningSocket(port: args.port)) : nil
    if let listener { try runtime.register(listener, name: "listen") }
    if args.hang { while true { pause() } }
    let counter = args.serve ? try Pattern.restoreOrCreate(kho, fill: 4096, counter: true) : nil
    guard runtime.ready() else { exit(4) }
    let generation = kho.generation
    try pattern.verify()
    let records = ring.records()
    guard records.map(\.sequence) == Array(0..<generation),
      records.map(\.text) == (0..<generation).map({ "generation \($0)" })
    else { throw Failure("trace ring holds \(records)") }
    try ring.append("generation \(generation)")
    let fds = openFDCount()
    if !args.serve, let expected = args.expectFDs, expected != fds {
      throw Failure("fd table has \(fds) entries, generation 1 had \(expected)")
    }
    if let counter, let listener {
      if kho.generation == 0 { say("PORT \(boundPort(listener))") }
      if let path = args.controlMount {
        let control = try ServiceControl.start(
          runtime: runtime, mountPoint: path,
          hooks: .init(stopServing: {}, resumeServing: {}, committed: { exit(0) }))
        if kho.generation == 0 { say("MOUNTED \(control.mount.mountPoint)") }
        Self.control = control
      }
      LineService(
        runtime: runtime, listener: listener,
        counter: (kho.arena.base + Int(counter.range.address)).assumingMemoryBound(to: UInt64.self),
        args: args,
        handOver: { toMissing in
          var next = args
          next.serve = true
          if toMissing { next.executable = "/nonexistent/kho-roundtrip" }
          try handOver(runtime, next, pattern: pattern, fds: -1)
        }
      ).serve()
    }

    if generation == args.generations {
      say(
        "OK generation=\(generation) bytes=\(pattern.range.length) scratch=\(kho.scratch.lowerBound) fds=\(fds) records=\(records.count + 1)"
      )
      exit(0)
    }
    // Generation 0 may have inherited fds from whatever started it, which
    // the first handover closes; from generation 1 on the table must keep
    // its size.
    try handOver(
      runtime, args, pattern: pattern, fds: generation == 0 ? -1 : (args.expectFDs ?? fds))
  }

  static func handOver(_ runtime: HandoverRuntime, _ args: Arguments, pattern: Pattern, fds: Int)
    throws
  {
    let kho = runtime.kho
    var argv = [
      args.executable, "--generations", "\(args.generations)", "--fill", "\(args.fill)",
      "--mode", args.overlapped ? "overlapped" : "in-place", "--expect-handover",
      "--expect-scratch", "\(kho.scratch.lowerBound)", "--next", args.executable,
    ]
    if fds >= 0 { argv += ["--expect-fds", "\(fds)"] }
    if args.socket { argv.append("--socket") }
    if args.serve { argv.append("--serve") }
    var image = NextImage(path: args.executable, arguments: argv)
    if let corrupt = args.corrupt, kho.generation == 0 {
      switch corrupt {
      case "exec": image.path = "/nonexistent/kho-roundtrip"
      case "crash": image.path = "/bin/false"
      case "hang": image.arguments.append("--hang")
      default: image.arguments += ["--damage", corrupt]
      }
    }
    do {
      let timeout: Duration = args.corrupt == "hang" ? .milliseconds(500) : .seconds(30)
      if case .committed = try runtime.handover(
        to: image, mode: args.overlapped ? .overlapped(timeout: timeout) : .inPlace)
      {
        exit(0)
      }
    } catch {
      // Rolled back: prove nothing was lost, then report.
      try pattern.verify()
      if args.serve { throw error }
      say("ROLLBACK generation=\(kho.generation) active=\(kho.outgoing.isActive) \(error)")
      exit(5)
    }
  }

  static func listeningSocket(port: UInt16) throws -> Int32 {
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    do {
      return try withUnsafePointer(to: &addr) { pointer throws(SystemCallError) in
        try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          address throws(SystemCallError) in
          try FileDescriptor.listeningTCPSocket(
            family: AF_INET, address: address, length: socklen_t(MemoryLayout<sockaddr_in>.size),
            backlog: 128
          ).rawValue
        }
      }
    } catch {
      throw Failure("listen: \(error)")
    }
  }

  static func boundPort(_ fd: Int32) -> UInt16 {
    var addr = sockaddr_in()
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return UInt16(bigEndian: addr.sin_port)
  }

  static func openFDCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var count = 0
    while readdir(dir) != nil { count += 1 }
    return count - 3  // ".", "..", and the directory's own fd
  }

  static func say(_ line: String) {
    print(line)
    fflush(nil)
  }
}

/// A region of arena memory filled with a position-dependent pattern, handed
/// over as node `pattern`.
struct Pattern {
  let kho: KHO
  let range: KHOMemoryRange
  var compatible = "kho-roundtrip-pattern-v1"

  static func restoreOrCreate(_ kho: KHO, fill: UInt64, counter: Bool = false) throws -> Pattern {
    let compatible = counter ? "kho-roundtrip-counter-v1" : "kho-roundtrip-pattern-v1"
    if let node = kho.incoming?.findNode(compatible: compatible) {
      guard let mem = node.property("mem")?.native(UInt64.self), mem.count == 2 else {
        throw RoundTrip.Failure("pattern node has no mem pair")
      }
      let range = KHOMemoryRange(address: mem[0], length: mem[1])
      _ = try kho.incoming!.claim(range)
      let pattern = Pattern(kho: kho, range: range, compatible: compatible)
      try pattern.registerNotifier()
      return pattern
    }
    let pages = try kho.allocator.allocate(bytes: fill)
    let pattern = Pattern(
      kho: kho, range: KHOMemoryRange(address: pages.lowerBound, length: fill),
      compatible: compatible)
    let base = kho.arena.base + Int(pages.lowerBound)
    for i in stride(from: 0, to: Int(fill), by: 8) {
      (base + i).storeBytes(of: counter ? 0 : Self.word(UInt64(i)), as: UInt64.self)
    }
    try pattern.registerNotifier()
    return pattern
  }

  static func word(_ offset: UInt64) -> UInt64 {
    (offset &* 0x9e37_79b9_7f4a_7c15) ^ 0xdead_beef_cafe_f00d
  }

  func verify() throws {
    let base = kho.arena.base + Int(range.address)
    for i in stride(from: 0, to: Int(range.length), by: 8) {
      guard (base + i).load(as: UInt64.self) == Self.word(UInt64(i)) else {
        throw RoundTrip.Failure("pattern differs at arena offset \(range.address + UInt64(i))")
      }
    }
  }

  func registerNotifier() throws {
    let range = self.range
    let compatible = self.compatible
    let name = compatible == "kho-roundtrip-pattern-v1" ? "pattern" : "counter"
    try kho.outgoing.register(
      KHONotifier(
        name: name,
        dump: { writer in
          try writer.beginNode(name)
          try writer.property("compatible", string: compatible)
          try writer.property("mem", native: [range.address, range.length])
          try writer.endNode()
        }))
  }
}

/// Ways to damage a handover on its way to the next image, one per kind of
/// input the next image must refuse. Applied by the next image to what it
/// inherited, before it boots.
enum Corruption {
  static func damageIncoming(_ kind: String) throws {
    guard let variable = getenv(HandoverRecord.environmentName).map({ String(cString: $0) }) else {
      return
    }
    let location = try HandoverLocation(parsing: variable)
    switch kind {
    case "fd":
      // The variable names stdin: not a memfd.
      setenv(
        HandoverRecord.environmentName,
        "v1,fd=0,size=0x\(String(location.arenaSize, radix: 16)),record=0x\(String(location.recordAddress, radix: 16))",
        1)
      return
    case "fd-size":
      setenv(
        HandoverRecord.environmentName,
        "v1,fd=\(location.fd),size=0x200000,record=0x\(String(location.recordAddress, radix: 16))",
        1)
      return
    default:
      break
    }
    guard
      let base = mmap(
        nil, Int(location.arenaSize), PROT_READ | PROT_WRITE, MAP_SHARED, location.fd, 0),
      base != MAP_FAILED
    else {
      throw RoundTrip.Failure("mmap of the inherited arena failed")
    }
    defer { munmap(base, Int(location.arenaSize)) }
    let arena = UnsafeMutableRawBufferPointer(start: base, count: Int(location.arenaSize))
    let record = Int(location.recordAddress)
    switch kind {
    case "record":
      arena[record + 20] ^= 0xff  // the arena size, under the checksum
    case "checksum":
      arena[record + 88] ^= 0x01
    case "blob":
      // A valid checksum over an invalid blob: FDT validation must catch it.
      let blobAt = Int(arena.load(fromByteOffset: record + 56, as: UInt64.self))
      arena.storeBytes(
        of: UInt32(0xdead_0001).bigEndian, toByteOffset: blobAt + 56, as: UInt32.self)
      try HandoverImage.reseal(recordAddress: location.recordAddress, in: arena)
    case "ranges":
      // A preserved range inside scratch, checksum made valid again.
      let cacheAt = Int(arena.load(fromByteOffset: record + 72, as: UInt64.self))
      let scratch = arena.load(fromByteOffset: record + 40, as: UInt64.self)
      arena.storeBytes(of: scratch, toByteOffset: cacheAt, as: UInt64.self)
      try HandoverImage.reseal(recordAddress: location.recordAddress, in: arena)
    default:
      throw RoundTrip.Failure("unknown damage \(kind)")
    }
  }
}
