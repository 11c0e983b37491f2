// libFuzzer entry for kho-cache's memcached text protocol: the real
// MemcacheHandler in an EmbeddedChannel, over a real CacheStore formatted
// afresh for every input in a small region (so that eviction, "object too
// large" and out-of-memory paths are reachable with short inputs).
//
// Built by Scripts/fuzz.sh against swift-nio and the KHOCacheServer and
// KHOCacheStore modules as SwiftPM compiles them into .build-fuzz (with
// -sanitize=fuzzer,address); only this file is compiled by swiftc.
//
// An input is a small control header, then the bytes a client sends:
//
//   byte 0   bits 0-2  s: the number of read lengths that follow (0-7);
//                      the stream arrives in s + 1 reads
//            bits 3-4  cache clock step between reads: 0, 1, 60, 3600 s
//            bit 5     freeze the store (a handover) before read f
//            bit 6     with bit 5: unfreeze after the last read, else let
//                      the freeze wait expire
//   byte 1   f, only with bit 5 (taken modulo the number of reads)
//   s bytes  the lengths of the first s reads, 1-256 each (byte + 1)
//   rest     the command stream; the last read takes what is left
//
// Scripts/fuzz.sh makes seeds from the plain command streams in
// Fuzz/corpus-memcache by prepending a few such headers.
//
// Any input may be answered with errors; none may crash, leave a reply
// that is not a sequence of well-formed memcached replies, or leave the
// store inconsistent (CacheStore.checkConsistency), or unable to be taken
// over by a next image (freeze, then attach). When time does not
// move, nothing is frozen and no line is long enough for the 2 KiB limit
// to depend on read sizes, the replies must not depend on how the stream
// was split into reads either.

import KHOCacheServer
import KHOCacheStore
import NIOCore
import NIOEmbedded

#if canImport(Glibc)
  import Glibc
#endif

/// Small on purpose: about a dozen 4 KiB slab pages, so a few kilobytes of
/// sets already evict.
let regionSize = 64 << 10
let itemSizeMax = 1024

/// The fake clock's monotonic nanoseconds: the harness moves it, so that
/// expiry depends on the input alone, never on how fast it runs.
nonisolated(unsafe) var monotonicNow: UInt64 = 0
let fakeClock = CacheClockSource(
  monotonicNanoseconds: { monotonicNow },
  wallSeconds: { 1_700_000_000 + Int64(monotonicNow / 1_000_000_000) })

struct Plan {
  /// Byte ranges of `stream`, one per read.
  var reads: [Range<Int>] = []
  var secondsPerRead: UInt64 = 0
  /// Freeze before this read.
  var freezeBefore: Int?
  var unfreezeAtEnd = false
  var stream: ArraySlice<UInt8> = []

  init?(_ input: [UInt8]) {
    guard let control = input.first else { return nil }
    var index = 1
    let splits = Int(control & 7)
    secondsPerRead = [0, 1, 60, 3600][Int(control >> 3) & 3]
    var freezeIndex: Int?
    if control & 0x20 != 0 {
      guard index < input.count else { return nil }
      freezeIndex = Int(input[index])
      unfreezeAtEnd = control & 0x40 != 0
      index += 1
    }
    guard index + splits <= input.count else { return nil }
    let lengths = input[index..<index + splits].map { Int($0) + 1 }
    index += splits
    stream = input[index...]
    var start = stream.startIndex
    for length in lengths where start < stream.endIndex {
      let end = min(start + length, stream.endIndex)
      reads.append(start..<end)
      start = end
    }
    if start < stream.endIndex || reads.isEmpty { reads.append(start..<stream.endIndex) }
    freezeBefore = freezeIndex.map { $0 % reads.count }
  }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func memcacheFuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
  let input = [UInt8](UnsafeBufferPointer(start: data, count: size))
  guard let plan = Plan(input) else { return 0 }
  let output = run(plan)
  if let problem = replyProblem(output) {
    fatalError("malformed reply stream: \(problem)\n\(printable(output))")
  }
  // The same stream in one read must be answered the same, when nothing
  // else can make the answers differ; except that, as memcached does, the
  // replies of a read are held while a refused data block is swallowed, so
  // a stream that ends inside one may have released fewer of them: one
  // answer must then be the start of the other.
  if plan.reads.count > 1 && splitInvariant(plan) {
    var single = plan
    single.reads = [plan.stream.startIndex..<plan.stream.endIndex]
    let again = run(single)
    precondition(
      again.starts(with: output) || output.starts(with: again),
      "replies depend on read boundaries:\nsplit:\n\(printable(output))\nwhole:\n\(printable(again))"
    )
  }
  return 0
}

/// Serves `plan` on a fresh store and connection; returns every byte the
/// handler wrote.
func run(_ plan: Plan) -> [UInt8] {
  // A fresh anonymous mapping each time: zero-filled, so nothing of a
  // previous input can leak into this one.
  guard let base = mmap(nil, regionSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0),
    base != MAP_FAILED
  else { fatalError("mmap: \(errno)") }
  defer { munmap(base, regionSize) }
  monotonicNow = 0
  let store: CacheStore
  do {
    store = try CacheStore.format(
      region: CacheRegion(base: base, size: regionSize), itemSizeMax: itemSizeMax,
      clock: fakeClock)
  } catch {
    fatalError("format: \(error)")
  }
  var configuration = CacheServerConfiguration()
  configuration.frozenWaitLimit = .milliseconds(20)
  configuration.frozenRetryInterval = .milliseconds(1)
  let context = CacheServerContext(store: store, configuration: configuration)
  let channel = EmbeddedChannel()
  let loop = channel.embeddedEventLoop
  var output: [UInt8] = []
  func drain() {
    while let buffer = try? channel.readOutbound(as: ByteBuffer.self) {
      output += buffer.readableBytesView
    }
  }
  func check(_ when: String) {
    do {
      try store.checkConsistency()
    } catch {
      fatalError("store inconsistent \(when): \(error)\nreplies so far:\n\(printable(output))")
    }
  }
  do {
    try channel.pipeline.syncOperations.addHandler(MemcacheHandler(context: context))
    try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 11211)).wait()
  } catch {
    fatalError("channel setup: \(error)")
  }
  for (index, read) in plan.reads.enumerated() {
    guard channel.isActive else { break }
    if index == plan.freezeBefore { store.freeze() }
    var buffer = channel.allocator.buffer(capacity: read.count)
    buffer.writeBytes(plan.stream[read])
    do {
      try channel.writeInbound(buffer)
    } catch {
      fatalError("writeInbound: \(error)")
    }
    drain()
    check("after read \(index)")
    // The cache clock jumps; the event loop's clock (which times parked
    // commands) moves a millisecond, one retry of a parked command.
    monotonicNow += plan.secondsPerRead * 1_000_000_000
    loop.advanceTime(by: .milliseconds(1))
    drain()
  }
  if plan.freezeBefore != nil {
    if plan.unfreezeAtEnd { store.unfreeze() }
    // Parked commands retry every millisecond; past the limit they fail.
    loop.advanceTime(by: .milliseconds(50))
    drain()
    check("after the freeze")
  }
  // A closed channel rightly refuses finishing twice: nothing to check.
  _ = try? channel.finish(acceptAlreadyClosed: true)
  drain()
  handOver(store, base: base)
  return output
}

/// Whatever the commands did, the store must survive a handover: frozen,
/// then attached by a "next image" over the same bytes, it is consistent
/// and holds what it held.
func handOver(_ store: CacheStore, base: UnsafeMutableRawPointer) {
  store.freeze()
  let before = store.stats()
  let next: CacheStore
  do {
    next = try CacheStore.attach(
      region: CacheRegion(base: base, size: regionSize), clock: fakeClock)
    try next.checkConsistency()
  } catch {
    fatalError("the next image cannot take the store over: \(error)")
  }
  let after = next.stats()
  for name in ["curr_items", "bytes", "total_items", "evictions"] {
    precondition(before[name] == after[name], "\(name) \(before[name]) became \(after[name])")
  }
}

/// Whether the replies to `plan` cannot depend on its read boundaries: time
/// stands still, nothing freezes, `stats` (pid, times, byte counters) is not
/// asked, and no line or block segment reaches the 2 KiB line limit, which
/// memcached too applies to what one read brought.
func splitInvariant(_ plan: Plan) -> Bool {
  guard plan.secondsPerRead == 0, plan.freezeBefore == nil else { return false }
  let stream = Array(plan.stream)
  var lineStart = 0
  for (index, byte) in stream.enumerated() where byte == UInt8(ascii: "\n") {
    if index - lineStart > 2000 { return false }
    lineStart = index + 1
  }
  if stream.count - lineStart > 2000 { return false }
  return !contains(stream, Array("stats".utf8))
}

func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
  guard haystack.count >= needle.count else { return false }
  for start in 0...(haystack.count - needle.count)
  where haystack[start..<start + needle.count].elementsEqual(needle) {
    return true
  }
  return false
}

// MARK: The reply grammar

/// Replies that are one fixed line.
let fixedReplies: Set<String> = [
  "ERROR", "STORED", "NOT_STORED", "EXISTS", "NOT_FOUND", "DELETED", "TOUCHED", "OK", "RESET",
  "END", "ERROR: shutdown not enabled", "ERROR Too many open connections",
]

/// The first problem in `bytes` read as memcached replies, or nil: lines
/// end in CRLF; VALUE blocks (then END) answer retrievals, STAT lines (then
/// END) answer stats; every other line is a known reply, a number (incr,
/// decr), VERSION or an error with a printable message.
func replyProblem(_ bytes: [UInt8]) -> String? {
  enum Group { case none, values, stats }
  var group = Group.none
  var index = 0
  while index < bytes.count {
    guard let end = lineEnd(bytes, from: index) else {
      return "unterminated line at \(index)"
    }
    let line = Array(bytes[index..<end])
    let at = index
    index = end + 2
    if line.starts(with: Array("VALUE ".utf8)) {
      guard group != .stats else { return "VALUE among STAT lines at \(at)" }
      let fields = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
      guard fields.count == 4 || fields.count == 5 else { return "VALUE line fields at \(at)" }
      let key = fields[1]
      guard (1...CacheLimits.maxKeyLength).contains(key.count) else {
        return "VALUE key of \(key.count) bytes at \(at)"
      }
      guard decimal(fields[2]).map({ $0 <= UInt64(UInt32.max) }) == true,
        let length = decimal(fields[3]), length < UInt64(itemSizeMax)
      else { return "VALUE flags or length at \(at)" }
      if fields.count == 5 {
        guard let cas = decimal(fields[4]), cas > 0 else { return "VALUE cas at \(at)" }
      }
      let valueEnd = index + Int(length)
      guard valueEnd + 2 <= bytes.count, bytes[valueEnd] == 13, bytes[valueEnd + 1] == 10 else {
        return "VALUE block of \(length) bytes not ended by CRLF at \(at)"
      }
      index = valueEnd + 2
      group = .values
      continue
    }
    if line.starts(with: Array("STAT ".utf8)) {
      guard group != .values else { return "STAT among VALUE blocks at \(at)" }
      let fields = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
      guard fields.count == 3, fields.allSatisfy({ !$0.isEmpty && $0.allSatisfy(isPrintable) })
      else { return "STAT line at \(at)" }
      group = .stats
      continue
    }
    let text = String(decoding: line, as: UTF8.self)
    if text == "END" {
      group = .none
      continue
    }
    guard group == .none else { return "\(text) inside a VALUE or STAT group at \(at)" }
    if fixedReplies.contains(text) { continue }
    if !line.isEmpty && line.count <= 20 && decimal(line[...]) != nil { continue }
    for prefix in ["VERSION ", "CLIENT_ERROR ", "SERVER_ERROR "] where text.hasPrefix(prefix) {
      guard line.count > prefix.utf8.count, line.allSatisfy(isPrintable) else {
        return "\(prefix)line with an empty or unprintable message at \(at)"
      }
      group = .none
    }
    if ["VERSION ", "CLIENT_ERROR ", "SERVER_ERROR "].contains(where: text.hasPrefix) { continue }
    return "unknown reply \"\(text)\" at \(at)"
  }
  return group == .none ? nil : "VALUE or STAT group without END"
}

func lineEnd(_ bytes: [UInt8], from start: Int) -> Int? {
  var index = start
  while index + 1 < bytes.count {
    if bytes[index] == 13 && bytes[index + 1] == 10 { return index }
    index += 1
  }
  return nil
}

/// A plain decimal of at most 20 digits that fits UInt64.
func decimal(_ field: ArraySlice<UInt8>) -> UInt64? {
  guard !field.isEmpty, field.count <= 20, field.allSatisfy({ $0 >= 48 && $0 <= 57 }) else {
    return nil
  }
  return UInt64(String(decoding: field, as: UTF8.self))
}

func isPrintable(_ byte: UInt8) -> Bool { byte >= 0x20 && byte < 0x7f }

/// The replies with control bytes escaped, for a failure message.
func printable(_ bytes: [UInt8]) -> String {
  var text = ""
  for byte in bytes.prefix(4096) {
    switch byte {
    case 10: text += "\\n\n"
    case 13: text += "\\r"
    case 0x20..<0x7f: text.unicodeScalars.append(UnicodeScalar(byte))
    default: text += "\\x" + String(byte, radix: 16)
    }
  }
  return bytes.count > 4096 ? text + "... (\(bytes.count) bytes)" : text
}
