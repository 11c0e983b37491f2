import KHOCacheStore
import NIOCore

// Command dispatch and replies, following memcached 1.6's proto_text.c
// (process_command_ascii and the process_*_command functions) so that every
// reply, error included, is byte for byte memcached's.
extension MemcacheHandler {
  func execute(line: UnsafeRawBufferPointer) -> Outcome {
    let tokens = Tokens(line)
    let n = tokens.memcachedCount
    let start = output.writerIndex
    guard tokens.count >= 1, tokens[0].count >= 2 else { return reply("ERROR") }
    let command = line.slice(tokens[0])
    let outcome: Outcome
    switch command[0] {
    case UInt8(ascii: "g"):
      guard n >= 3 else { return reply("ERROR") }
      if command.equals("get") {
        outcome = retrieve(line, tokens, cas: false, touch: false)
      } else if command.equals("gets") {
        outcome = retrieve(line, tokens, cas: true, touch: false)
      } else if command.equals("gat") {
        outcome = retrieve(line, tokens, cas: false, touch: true)
      } else if command.equals("gats") {
        outcome = retrieve(line, tokens, cas: true, touch: true)
      } else {
        outcome = reply("ERROR")
      }
    case UInt8(ascii: "s") where command.equals("set"):
      outcome = n == 6 || n == 7 ? parseStore(.set, line, tokens) : reply("ERROR")
    case UInt8(ascii: "s") where command.equals("stats"):
      outcome = stats(line, tokens)
    case UInt8(ascii: "s") where command.equals("slabs"):
      outcome = slabs(line, tokens)
    case UInt8(ascii: "s") where command.equals("shutdown"):
      outcome = shutdown(line, tokens)
    case UInt8(ascii: "m") where command.count == 2:
      outcome = executeMeta(command[1], line, tokens)
    case UInt8(ascii: "a") where command.equals("add"):
      outcome = n == 6 || n == 7 ? parseStore(.add, line, tokens) : reply("ERROR")
    case UInt8(ascii: "a") where command.equals("append"):
      outcome = n == 6 || n == 7 ? parseStore(.append, line, tokens) : reply("ERROR")
    case UInt8(ascii: "c") where command.equals("cas"):
      outcome = n == 7 || n == 8 ? parseStore(.cas(0), line, tokens) : reply("ERROR")
    case UInt8(ascii: "c") where command.equals("cache_memlimit"):
      outcome = n == 3 || n == 4 ? cacheMemlimit(line, tokens) : reply("ERROR")
    case UInt8(ascii: "i") where command.equals("incr"):
      outcome = n == 4 || n == 5 ? arithmetic(line, tokens, increment: true) : reply("ERROR")
    case UInt8(ascii: "d") where command.equals("delete"):
      outcome = (3...5).contains(n) ? delete(line, tokens) : reply("ERROR")
    case UInt8(ascii: "d") where command.equals("decr"):
      outcome = n == 4 || n == 5 ? arithmetic(line, tokens, increment: false) : reply("ERROR")
    case UInt8(ascii: "t") where command.equals("touch"):
      outcome = n == 4 || n == 5 ? touch(line, tokens) : reply("ERROR")
    case UInt8(ascii: "g"), UInt8(ascii: "s"), UInt8(ascii: "a"), UInt8(ascii: "c"),
      UInt8(ascii: "i"),
      UInt8(ascii: "d"), UInt8(ascii: "t"):
      outcome = reply("ERROR")
    default:
      outcome = executeOther(command, line, tokens)
    }
    // A command that will run again later must leave no partial reply
    // (a get resuming at a later key keeps the values it has written).
    if outcome == .frozen && retrieveResumeIndex == nil { output.moveWriterIndex(to: start) }
    return outcome
  }

  /// Commands not dispatched on their first letter, as in memcached.
  private func executeOther(
    _ command: UnsafeRawBufferPointer, _ line: UnsafeRawBufferPointer, _ tokens: Tokens
  )
    -> Outcome
  {
    let n = tokens.memcachedCount
    if command.equals("replace") {
      return n == 6 || n == 7 ? parseStore(.replace, line, tokens) : reply("ERROR")
    } else if command.equals("prepend") {
      return n == 6 || n == 7 ? parseStore(.prepend, line, tokens) : reply("ERROR")
    } else if command.equals("bget") {
      // memcached's WANT_TOKENS_MIN(ntokens, 3): a key at least.
      return n >= 3 ? retrieve(line, tokens, cas: false, touch: false) : reply("ERROR")
    } else if command.equals("flush_all") {
      return (2...4).contains(n) ? flushAll(line, tokens) : reply("ERROR")
    } else if command.equals("version") {
      return reply("VERSION " + shared.configuration.version)
    } else if command.equals("quit") {
      return .close
    } else if command.equals("verbosity") {
      return n == 3 || n == 4 ? verbosity(line, tokens) : reply("ERROR")
    } else if line.slice(tokens[n - 2]).hasPrefix("HTTP/") {
      return .close
    }
    return reply("ERROR")
  }

  // MARK: Replies

  /// Writes one reply line unless the command said noreply.
  @discardableResult
  func reply(_ text: String, noreply: Bool = false) -> Outcome {
    if !noreply {
      output.writeString(text)
      output.writeStaticString("\r\n")
    }
    return .done
  }

  /// `reply` for a fixed text: no String is built or measured.
  @discardableResult
  func replyStatic(_ text: StaticString, noreply: Bool = false) -> Outcome {
    if !noreply {
      output.writeWithUnsafeMutableBytes(minimumWritableBytes: text.utf8CodeUnitCount + 2) {
        target in
        let count = text.utf8CodeUnitCount
        target.baseAddress!.copyMemory(from: text.utf8Start, byteCount: count)
        target[count] = UInt8(ascii: "\r")
        target[count + 1] = UInt8(ascii: "\n")
        return count + 2
      }
    }
    return .done
  }

  /// memcached's set_noreply_maybe: the last real token is "noreply".
  func isNoreply(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Bool {
    line.slice(tokens[tokens.memcachedCount - 2]).equals("noreply")
  }

  /// The answer to a mutation that met a frozen store.
  func frozen() -> Outcome {
    if frozenWaitExpired { return reply("SERVER_ERROR frozen for handover") }
    return .frozen
  }

  // MARK: get, gets, gat, gats

  private func retrieve(_ line: UnsafeRawBufferPointer, _ tokens: Tokens, cas: Bool, touch: Bool)
    -> Outcome
  {
    var exptime: Int64?
    var first = 1
    if touch {
      guard let value = parseInt32Truncating(line.slice(tokens[1])) else {
        return reply("CLIENT_ERROR invalid exptime argument")
      }
      exptime = Int64(value)
      first = 2
    }
    let start = output.writerIndex
    let resumeAt = retrieveResumeIndex ?? first
    for index in resumeAt..<tokens.count {
      let key = line.slice(tokens[index])
      guard key.count <= CacheLimits.maxKeyLength else {
        // memcached drops the values already gathered and answers only this
        // (values already sent, when back-pressure split the reply, stay sent).
        output.moveWriterIndex(to: start)
        return reply("CLIENT_ERROR bad command line format")
      }
      if index > resumeAt && output.readableBytes >= shared.configuration.outputFlushThreshold {
        // Bound the reply in memory: flush it, go on from this key later.
        retrieveResumeIndex = index
        return .outputFull
      }
      do {
        try writeValue(key, cas: cas, touch: exptime)
      } catch {
        // Keep the values of the keys before; retry from this one.
        if index > first { retrieveResumeIndex = index }
        return frozen()
      }
    }
    output.writeFixed("END\r\n")
    return .done
  }

  private func writeValue(_ key: UnsafeRawBufferPointer, cas: Bool, touch exptime: Int64?)
    throws(CacheOperationError)
  {
    // The closure is passed as a literal (a closure in a variable escapes,
    // and is allocated on every call).
    let hit: Bool
    if let exptime {
      hit = try store.readAndTouch(key, exptime: exptime) {
        self.output.writeValueLine($0, cas: cas)
      }
    } else {
      hit = store.read(key) { self.output.writeValueLine($0, cas: cas) }
    }
    if RuntimeSettings.detailEnabled.load(ordering: .relaxed) {
      PrefixStats.record(key, .get(hit: hit))
    }
  }

  // MARK: set, add, replace, append, prepend, cas

  /// memcached's process_update_command: parse, then wait for the data block.
  private func parseStore(_ mode: StoreMode, _ line: UnsafeRawBufferPointer, _ tokens: Tokens)
    -> Outcome
  {
    let noreply = isNoreply(line, tokens)
    let key = line.slice(tokens[1])
    guard key.count <= CacheLimits.maxKeyLength else {
      return reply("CLIENT_ERROR bad command line format", noreply: noreply)
    }
    guard let flags = parseUInt32Truncating(line.slice(tokens[2])),
      let exptime = parseInt32Truncating(line.slice(tokens[3])),
      let length = parseInt32Truncating(line.slice(tokens[4]))
    else { return reply("CLIENT_ERROR bad command line format", noreply: noreply) }
    var mode = mode
    if case .cas = mode {
      guard let unique = parseUInt64(line.slice(tokens[5])) else {
        return reply("CLIENT_ERROR bad command line format", noreply: noreply)
      }
      mode = .cas(unique)
    }
    guard length >= 0 && length <= Int32.max - 2 else {
      return reply("CLIENT_ERROR bad command line format", noreply: noreply)
    }
    guard store.fits(keyLength: key.count, valueLength: Int(length)) else {
      // Refused before reading: swallow the data block, as memcached does.
      store.refuseTooLarge(key, mode: mode)
      swallow = Int(length) + 2
      return reply("SERVER_ERROR object too large for cache", noreply: noreply)
    }
    if RuntimeSettings.detailEnabled.load(ordering: .relaxed) { PrefixStats.record(key, .set) }
    let blockLength = Int(length)
    // The usual case: the data block came in the same read as the line.
    // Stored from where the bytes are, with no copy of the key, unless
    // the store is frozen: then the command waits as one whose data came
    // later would (completeStore retries it).
    if let data = dataAfterLine, data.count >= blockLength + 2 {
      do throws(CacheOperationError) {
        let result = try storeBlock(mode, key: key, data, blockLength, flags, Int64(exptime))
        dataConsumed = blockLength + 2
        return replyToStore(.success(result), mode: mode, noreply: noreply)
      } catch .frozen {
        // fall through: wait with the command pending
      } catch {
        dataConsumed = blockLength + 2
        return replyToStore(.failure(error), mode: mode, noreply: noreply)
      }
    }
    pending = PendingStore(
      mode: mode, key: Array(key), flags: flags, exptime: Int64(exptime), length: blockLength,
      noreply: noreply)
    return .done
  }

  /// Stores the data block at the start of `data` (`length` bytes, then
  /// "\r\n"). Returns nil when the block does not end with "\r\n".
  private func storeBlock(
    _ mode: StoreMode, key: UnsafeRawBufferPointer, _ data: UnsafeRawBufferPointer, _ length: Int,
    _ flags: UInt32, _ exptime: Int64
  ) throws(CacheOperationError) -> StoreResult? {
    guard data[length] == UInt8(ascii: "\r") && data[length + 1] == UInt8(ascii: "\n") else {
      return nil
    }
    return try store.store(
      mode, key: key, value: data.slice(0..<length), flags: flags, exptime: exptime)
  }

  /// The data block of `pending` has arrived (or not yet): store it.
  func completeStore() -> Outcome {
    if let meta = pending!.meta { return completeMetaStore(pending!, meta) }
    return completeClassicStore()
  }

  private func completeClassicStore() -> Outcome {
    let length = pending!.length
    guard input!.readableBytes >= length + 2 else { return .needMoreInput }
    let mode = pending!.mode
    let noreply = pending!.noreply
    let flags = pending!.flags
    let exptime = pending!.exptime
    // (withUnsafe... rethrow untyped errors: the closures return a Result.)
    let result = input!.withUnsafeReadableBytes { bytes in
      pending!.key.withUnsafeBytes { key -> Result<StoreResult?, CacheOperationError> in
        do throws(CacheOperationError) {
          return .success(try storeBlock(mode, key: key, bytes, length, flags, exptime))
        } catch {
          return .failure(error)
        }
      }
    }
    switch result {
    case .failure(.frozen):
      let outcome = frozen()
      guard outcome == .done else { return outcome }
      // Waited too long: frozen() answered; the block is dropped.
      input!.moveReaderIndex(forwardBy: length + 2)
      pending = nil
      return .done
    default: break
    }
    input!.moveReaderIndex(forwardBy: length + 2)
    pending = nil
    return replyToStore(result, mode: mode, noreply: noreply)
  }

  /// memcached's reply to a storage command's outcome (nil: a bad data chunk).
  private func replyToStore(
    _ result: Result<StoreResult?, CacheOperationError>, mode: StoreMode, noreply: Bool
  ) -> Outcome {
    switch result {
    case .success(nil): replyStatic("CLIENT_ERROR bad data chunk", noreply: noreply)
    case .success(.stored): replyStatic("STORED", noreply: noreply)
    case .success(.notStored): replyStatic("NOT_STORED", noreply: noreply)
    case .success(.exists): replyStatic("EXISTS", noreply: noreply)
    case .success(.notFound): replyStatic("NOT_FOUND", noreply: noreply)
    case .failure(.tooLarge) where mode.joinsOldValue,
      .failure(.outOfMemory) where mode.joinsOldValue:
      // memcached's do_store_item: when the joined item cannot be
      // allocated (too large, or no memory), append/prepend is NOT_STORED.
      replyStatic("NOT_STORED", noreply: noreply)
    case .failure(.tooLarge):
      replyStatic("SERVER_ERROR object too large for cache", noreply: noreply)
    case .failure(_): replyStatic("SERVER_ERROR out of memory storing object", noreply: noreply)
    }
  }

  // MARK: delete, incr, decr, touch

  private func delete(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    let n = tokens.memcachedCount
    var noreply = false
    if n > 3 {
      let holdIsZero = line.slice(tokens[2]).equals("0")
      noreply = isNoreply(line, tokens)
      let valid = (n == 4 && (holdIsZero || noreply)) || (n == 5 && holdIsZero && noreply)
      guard valid else {
        return reply(
          "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]", noreply: noreply)
      }
    }
    let key = line.slice(tokens[1])
    guard key.count <= CacheLimits.maxKeyLength else {
      return reply("CLIENT_ERROR bad command line format", noreply: noreply)
    }
    if RuntimeSettings.detailEnabled.load(ordering: .relaxed) { PrefixStats.record(key, .delete) }
    do {
      return reply(try store.delete(key) ? "DELETED" : "NOT_FOUND", noreply: noreply)
    } catch {
      return frozen()
    }
  }

  private func arithmetic(_ line: UnsafeRawBufferPointer, _ tokens: Tokens, increment: Bool)
    -> Outcome
  {
    let noreply = isNoreply(line, tokens)
    let key = line.slice(tokens[1])
    guard key.count <= CacheLimits.maxKeyLength else {
      return reply("CLIENT_ERROR bad command line format", noreply: noreply)
    }
    guard let delta = parseUInt64(line.slice(tokens[2])) else {
      return reply("CLIENT_ERROR invalid numeric delta argument", noreply: noreply)
    }
    do {
      guard let value = try store.arithmetic(key, increment: increment, delta: delta) else {
        return reply("NOT_FOUND", noreply: noreply)
      }
      return reply(String(value), noreply: noreply)
    } catch .nonNumeric {
      return reply("CLIENT_ERROR cannot increment or decrement non-numeric value", noreply: noreply)
    } catch .frozen {
      return frozen()
    } catch {
      return reply("SERVER_ERROR out of memory", noreply: noreply)
    }
  }

  private func touch(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    let noreply = isNoreply(line, tokens)
    let key = line.slice(tokens[1])
    guard key.count <= CacheLimits.maxKeyLength else {
      return reply("CLIENT_ERROR bad command line format", noreply: noreply)
    }
    guard let exptime = parseInt32Truncating(line.slice(tokens[2])) else {
      return reply("CLIENT_ERROR invalid exptime argument", noreply: noreply)
    }
    do {
      return reply(
        try store.touch(key, exptime: Int64(exptime)) ? "TOUCHED" : "NOT_FOUND", noreply: noreply)
    } catch {
      return frozen()
    }
  }

  // MARK: flush_all, verbosity, stats

  private func flushAll(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    let noreply = isNoreply(line, tokens)
    // -F, before the arguments are looked at, as in memcached.
    guard shared.configuration.flushEnabled else {
      store.countRefusedFlush()
      return reply("CLIENT_ERROR flush_all not allowed", noreply: noreply)
    }
    var delay: Int32 = 0
    if tokens.memcachedCount != (noreply ? 3 : 2) {
      guard let value = parseInt32Truncating(line.slice(tokens[1])) else {
        return reply("CLIENT_ERROR invalid exptime argument", noreply: noreply)
      }
      delay = value
    }
    do {
      try store.flushAll(delay: Int64(delay))
      return reply("OK", noreply: noreply)
    } catch {
      return frozen()
    }
  }

  private func verbosity(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    let noreply = isNoreply(line, tokens)
    guard let level = parseUInt32Truncating(line.slice(tokens[1])) else {
      return reply("CLIENT_ERROR bad command line format", noreply: noreply)
    }
    RuntimeSettings.verbosity.store(Int(level), ordering: .relaxed)
    return reply("OK", noreply: noreply)
  }
}

extension StoreMode {
  /// append and prepend: the stored item is the old value joined with the new.
  var joinsOldValue: Bool {
    switch self {
    case .append, .prepend: true
    default: false
    }
  }
}

extension ByteBuffer {
  /// Writes one `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n` block
  /// with one capacity check and plain stores: a hit's reply used to be
  /// eight separate writes, each checking uniqueness and capacity.
  mutating func writeValueLine(_ item: CacheItemView, cas: Bool) {
    // "VALUE " + " " + " " + "\r\n" + "\r\n", two or three decimals of
    // at most 20 digits, and a space before the CAS.
    let most = 14 + item.key.count + item.value.count + 20 * 3 + 1
    writeWithUnsafeMutableBytes(minimumWritableBytes: most) { target in
      var at = 0
      @inline(__always) func put(_ bytes: UnsafeRawBufferPointer) {
        if let base = bytes.baseAddress, !bytes.isEmpty {
          (target.baseAddress! + at).copyMemory(from: base, byteCount: bytes.count)
        }
        at += bytes.count
      }
      @inline(__always) func put(_ literal: StaticString) {
        put(UnsafeRawBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount))
      }
      @inline(__always) func put(_ byte: UInt8) {
        target[at] = byte
        at += 1
      }
      @inline(__always) func putDecimal(_ value: UInt64) {
        at += formatDecimal(value, into: UnsafeMutableRawBufferPointer(rebasing: target[at...]))
      }
      put("VALUE ")
      put(item.key)
      put(UInt8(ascii: " "))
      putDecimal(UInt64(item.flags))
      put(UInt8(ascii: " "))
      putDecimal(UInt64(item.value.count))
      if cas {
        put(UInt8(ascii: " "))
        putDecimal(item.cas)
      }
      put("\r\n")
      put(item.value)
      put("\r\n")
      return at
    }
  }

  /// writeStaticString at about half the cost: one reserve, one copy.
  mutating func writeFixed(_ literal: StaticString) {
    let count = literal.utf8CodeUnitCount
    writeWithUnsafeMutableBytes(minimumWritableBytes: count) { target in
      target.baseAddress!.copyMemory(from: literal.utf8Start, byteCount: count)
      return count
    }
  }

  /// Writes `prefix`, then `value` in decimal, with one capacity check
  /// (each separate write checks uniqueness and capacity again).
  mutating func writeStaticString(_ prefix: StaticString, decimal value: UInt64) {
    let count = prefix.utf8CodeUnitCount
    writeWithUnsafeMutableBytes(minimumWritableBytes: count + 20) { target in
      target.baseAddress!.copyMemory(from: prefix.utf8Start, byteCount: count)
      return count
        + formatDecimal(value, into: UnsafeMutableRawBufferPointer(rebasing: target[count...]))
    }
  }

  /// Writes "\r\n", `block`, "\r\n" (the end of a reply line and a data
  /// block) with one capacity check.
  mutating func writeLineEndAndBlock(_ block: UnsafeRawBufferPointer) {
    writeWithUnsafeMutableBytes(minimumWritableBytes: block.count + 4) { target in
      target[0] = UInt8(ascii: "\r")
      target[1] = UInt8(ascii: "\n")
      if let base = block.baseAddress, !block.isEmpty {
        (target.baseAddress! + 2).copyMemory(from: base, byteCount: block.count)
      }
      target[block.count + 2] = UInt8(ascii: "\r")
      target[block.count + 3] = UInt8(ascii: "\n")
      return block.count + 4
    }
  }

  /// Writes `value` in decimal without going through String.
  @inline(__always) mutating func writeDecimal(_ value: UInt64) {
    var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes of scratch
    withUnsafeMutableBytes(of: &digits) { scratch in
      let count = formatDecimal(value, into: scratch)
      writeBytes(UnsafeRawBufferPointer(rebasing: scratch[..<count]))
    }
  }
}

/// Writes `value` in decimal at the start of `target` (at least 20 bytes:
/// UInt64.max has 20 digits) and returns the number of digits.
@inline(__always) func formatDecimal(_ value: UInt64, into target: UnsafeMutableRawBufferPointer)
  -> Int
{
  var digits = 1
  var rest = value
  while rest >= 10 {
    digits += 1
    rest /= 10
  }
  precondition(target.count >= digits)
  rest = value
  var index = digits
  repeat {
    index -= 1
    target[index] = UInt8(truncatingIfNeeded: 48 + rest % 10)
    rest /= 10
  } while rest > 0
  return digits
}
