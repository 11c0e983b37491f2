import KHOCacheStore
import NIOCore

// memcached 1.6.18's meta commands (proto_text.c: process_mget_command,
// process_mset_command, process_mdelete_command,
// process_marithmetic_command, process_meta_command and
// _meta_flag_preparse), reply for reply and error for error.

/// memcached's MFLAG_MAX_OPT_LENGTH (compared with ntokens) and
/// MFLAG_MAX_OPAQUE_LENGTH.
private let maxMetaTokens = 20
private let maxOpaqueLength = 32

/// What `_meta_flag_preparse` gathers from a meta command's flags.
struct MetaFlags {
  var noUpdate = false
  var locked = false
  var vivify = false
  var value = false
  var setStale = false
  var noReply = false
  var hasCas = false
  var newTTL = false
  var binaryKey = false
  var mode: UInt8 = 0
  var exptime: Int64 = 0
  var vivifyExptime: Int64 = 0
  var recacheExptime: Int64 = 0
  var clientFlags: UInt32 = 0
  var compareCas: UInt64 = 0
  var delta: UInt64 = 1
  var initial: UInt64 = 0
  /// The key, base64-decoded when `b` was given.
  var key: [UInt8] = []
}

/// A set of ASCII bytes (0..<128) in two words.
struct ASCIISet {
  private var low: UInt64 = 0
  private var high: UInt64 = 0

  func contains(_ byte: UInt8) -> Bool {
    byte < 64 ? low & (1 << byte) != 0 : high & (1 << (byte - 64)) != 0
  }

  mutating func insert(_ byte: UInt8) {
    if byte < 64 { low |= 1 << byte } else { high |= 1 << (byte - 64) }
  }
}

/// How an `ms` reply is worded once the store has answered: its flags
/// that echo something, in the order given.
struct PendingMetaStore {
  enum Part {
    case opaque([UInt8])
    case key
    case cas
  }
  var parts: [Part]
  var options: MetaStoreOptions
  var quiet: Bool
}

extension MetaFlags {
  /// `_meta_flag_preparse`: flags from token `start` on. Returns the
  /// error line on failure (nil for the caller's default).
  mutating func parse(_ line: UnsafeRawBufferPointer, _ tokens: Tokens, from start: Int)
    -> (failed: Bool, error: String?)
  {
    key = Array(line.slice(tokens[1]))
    // Flags seen so far, one bit per ASCII letter (no allocation per command).
    var seen = ASCIISet()
    var failed = false
    var error: String?
    for index in start..<tokens.count {
      let token = line.slice(tokens[index])
      let flag = token[0]
      if flag >= 127 || seen.contains(flag) { return (true, "CLIENT_ERROR duplicate flag") }
      seen.insert(flag)
      let argument = token.slice(1..<token.count)
      switch flag {
      case UInt8(ascii: "b"):
        binaryKey = true
        if let decoded = base64Decode(key) {
          key = decoded
        } else {
          key = []
          error = "CLIENT_ERROR error decoding key"
          failed = true
        }
      case UInt8(ascii: "N"), UInt8(ascii: "T"), UInt8(ascii: "R"):
        locked = true
        guard let value = parseInt32Truncating(argument) else {
          error = "CLIENT_ERROR bad token in command line format"
          failed = true
          continue
        }
        if flag == UInt8(ascii: "N") {
          vivify = true
          vivifyExptime = Int64(value)
        } else if flag == UInt8(ascii: "T") {
          exptime = Int64(value)
          newTTL = true
        } else {
          recacheExptime = Int64(value)
        }
      case UInt8(ascii: "l"), UInt8(ascii: "h"):
        locked = true
      case UInt8(ascii: "O"), UInt8(ascii: "P"), UInt8(ascii: "L"), UInt8(ascii: "k"),
        UInt8(ascii: "s"), UInt8(ascii: "t"), UInt8(ascii: "c"), UInt8(ascii: "f"):
        break
      case UInt8(ascii: "v"): value = true
      case UInt8(ascii: "u"): noUpdate = true
      case UInt8(ascii: "q"): noReply = true
      case UInt8(ascii: "I"): setStale = true
      case UInt8(ascii: "F"):
        if let value = parseUInt32Truncating(argument) {
          clientFlags = value
        } else {
          failed = true
        }
      case UInt8(ascii: "C"):
        if let value = parseUInt64(argument) {
          compareCas = value
          hasCas = true
        } else {
          error = "CLIENT_ERROR bad token in command line format"
          failed = true
        }
      case UInt8(ascii: "M"):
        if token.count != 2 {
          error = "CLIENT_ERROR incorrect length for M token"
          failed = true
        } else {
          mode = token[1]
        }
      case UInt8(ascii: "J"), UInt8(ascii: "D"):
        if let value = parseUInt64(argument) {
          if flag == UInt8(ascii: "J") { initial = value } else { delta = value }
        } else {
          error =
            flag == UInt8(ascii: "J")
            ? "CLIENT_ERROR invalid numeric initial value"
            : "CLIENT_ERROR invalid numeric delta value"
          failed = true
        }
      default:
        return (true, "CLIENT_ERROR invalid flag")
      }
    }
    return (failed, error)
  }
}

extension MemcacheHandler {
  /// Dispatches a two-letter command starting with "m", as memcached's
  /// process_command_ascii does.
  func executeMeta(_ letter: UInt8, _ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    switch letter {
    case UInt8(ascii: "g"): return metaGet(line, tokens)
    case UInt8(ascii: "s"): return metaSet(line, tokens)
    case UInt8(ascii: "d"): return metaDelete(line, tokens)
    case UInt8(ascii: "a"): return metaArithmetic(line, tokens)
    case UInt8(ascii: "n"): return reply("MN")
    case UInt8(ascii: "e"): return metaDebug(line, tokens)
    default: return reply("ERROR")
    }
  }

  // MARK: Reply pieces

  /// Writes " k<key>", base64 with a trailing " b" for a binary key (META_KEY).
  private func writeMetaKey(_ key: UnsafeRawBufferPointer, binary: Bool) {
    output.writeStaticString(" k")
    if binary {
      output.writeBytes(base64Encode(key))
      output.writeStaticString(" b")
    } else {
      output.writeBytes(key)
    }
  }

  private func writeFlag(_ letter: UInt8, _ number: UInt64) {
    output.writeInteger(UInt8(ascii: " "))
    output.writeInteger(letter)
    output.writeDecimal(number)
  }

  private func writeTTL(_ item: MetaItem) {
    output.writeStaticString(" t")
    let remaining = item.remainingSeconds
    if remaining < 0 {
      output.writeStaticString("-1")
    } else {
      output.writeDecimal(UInt64(remaining))
    }
  }

  /// The O and k flags, the only ones a miss (EN, NF, EX) echoes. Returns
  /// false (after writing the error) for an opaque that is too long.
  private func writeMissFlags(
    _ line: UnsafeRawBufferPointer, _ tokens: Tokens, _ flags: MetaFlags, from start: Int
  ) -> Bool {
    for index in start..<tokens.count {
      let token = line.slice(tokens[index])
      if token[0] == UInt8(ascii: "O") {
        guard token.count <= maxOpaqueLength else { return false }
        output.writeStaticString(" ")
        output.writeBytes(token)
      } else if token[0] == UInt8(ascii: "k") {
        flags.key.withUnsafeBytes { writeMetaKey($0, binary: flags.binaryKey) }
      }
    }
    return true
  }

  /// memcached's out_errstring: errors are written even under `q`.
  private func metaError(_ text: String, since start: Int) -> Outcome {
    output.moveWriterIndex(to: start)
    return reply(text)
  }

  /// The checks every meta command but `ms` starts with.
  private func metaPrologue(
    _ line: UnsafeRawBufferPointer, _ tokens: Tokens, tooLong: String, flagError: String?
  ) -> (MetaFlags?, Outcome) {
    let n = tokens.memcachedCount
    guard n >= 3 else { return (nil, reply("ERROR")) }
    guard tokens[1].count <= CacheLimits.maxKeyLength else {
      return (nil, reply("CLIENT_ERROR bad command line format"))
    }
    guard n <= maxMetaTokens else { return (nil, reply(tooLong)) }
    var flags = MetaFlags()
    let (failed, error) = flags.parse(line, tokens, from: 2)
    if failed {
      return (nil, reply(flagError ?? error ?? "CLIENT_ERROR bad command line format"))
    }
    return (flags, .done)
  }

  // MARK: mg

  private func metaGet(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    let (parsed, early) = metaPrologue(
      line, tokens, tooLong: "CLIENT_ERROR options flags are too long", flagError: nil)
    guard let flags = parsed else { return early }
    let start = output.writerIndex
    // h and l only read; T and N change the item, so they wait out a freeze.
    let mutates = flags.newTTL || flags.vivify
    do {
      let hit = try flags.key.withUnsafeBytes { key throws(CacheOperationError) in
        try store.metaGet(
          key, vivify: flags.vivify, mutates: mutates, touches: flags.newTTL,
          noUpdate: flags.noUpdate
        ) { item, created -> Bool? in
          guard let item else { return nil }
          return writeHit(item, created: created, line, tokens, flags)
        }
      }
      switch hit {
      case .some(true): return .done
      case .some(false): return metaError("CLIENT_ERROR opaque token too long", since: start)
      case .none: break
      }
    } catch {
      return frozen()
    }
    output.writeStaticString("EN")
    guard writeMissFlags(line, tokens, flags, from: 2) else {
      return metaError("CLIENT_ERROR opaque token too long", since: start)
    }
    output.writeStaticString("\r\n")
    // A quiet miss says nothing at all.
    if flags.noReply { output.moveWriterIndex(to: start) }
    return .done
  }

  /// The reply to an mg hit, its flags in the order asked, then Z, X, W.
  private func writeHit(
    _ item: MetaItem, created: Bool, _ line: UnsafeRawBufferPointer, _ tokens: Tokens,
    _ flags: MetaFlags
  ) -> Bool {
    if flags.value {
      output.writeStaticString("VA ", decimal: UInt64(item.value.count))
    } else {
      output.writeStaticString("HD")
    }
    var won = false
    for index in 2..<tokens.count {
      let token = line.slice(tokens[index])
      switch token[0] {
      case UInt8(ascii: "T"): item.setExptime(flags.exptime)
      case UInt8(ascii: "N"):
        if created {
          item.setExptime(flags.vivifyExptime)
          won = true
        }
      case UInt8(ascii: "R"):
        if !item.tokenSent && !created && item.expiresBefore(flags.recacheExptime) { won = true }
      case UInt8(ascii: "s"): writeFlag(UInt8(ascii: "s"), UInt64(item.value.count))
      case UInt8(ascii: "t"): writeTTL(item)
      case UInt8(ascii: "c"): writeFlag(UInt8(ascii: "c"), item.cas)
      case UInt8(ascii: "f"): writeFlag(UInt8(ascii: "f"), UInt64(item.flags))
      case UInt8(ascii: "l"): writeFlag(UInt8(ascii: "l"), UInt64(item.secondsSinceAccess))
      case UInt8(ascii: "h"): writeFlag(UInt8(ascii: "h"), item.fetched ? 1 : 0)
      case UInt8(ascii: "O"):
        guard token.count <= maxOpaqueLength else { return false }
        output.writeStaticString(" ")
        output.writeBytes(token)
      case UInt8(ascii: "k"): writeMetaKey(item.key, binary: item.binaryKey)
      default: break
      }
    }
    if item.tokenSent { output.writeStaticString(" Z") }
    if item.stale {
      output.writeStaticString(" X")
      if !item.tokenSent { won = true }
    }
    if won {
      output.writeStaticString(" W")
      item.markTokenSent()
    }
    if flags.value {
      output.writeLineEndAndBlock(item.value)
    } else {
      output.writeStaticString("\r\n")
    }
    return true
  }

  // MARK: ms

  private func metaSet(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    let n = tokens.memcachedCount
    guard n >= 3 else { return reply("ERROR") }
    guard tokens[1].count <= CacheLimits.maxKeyLength, n != 3 else {
      return reply("CLIENT_ERROR bad command line format")
    }
    guard n <= maxMetaTokens else { return reply("CLIENT_ERROR options flags too long") }
    guard let length = parseInt32Truncating(line.slice(tokens[2])), length >= 0,
      length <= Int32.max - 2
    else { return reply("CLIENT_ERROR bad command line format") }
    var flags = MetaFlags()
    let (failed, error) = flags.parse(line, tokens, from: 3)
    // From here on an error swallows the data block, as memcached does.
    let refuse = { (text: String) -> Outcome in
      self.swallow = Int(length) + 2
      return self.reply(text)
    }
    if failed { return refuse(error ?? "CLIENT_ERROR bad command line format") }
    var parts: [PendingMetaStore.Part] = []
    var opaqueTooLong = false
    for index in 3..<tokens.count {
      let token = line.slice(tokens[index])
      switch token[0] {
      case UInt8(ascii: "O"):
        if token.count > maxOpaqueLength {
          opaqueTooLong = true
        } else {
          parts.append(.opaque(Array(token)))
        }
      case UInt8(ascii: "k"): parts.append(.key)
      case UInt8(ascii: "c"): parts.append(.cas)
      default: break
      }
    }
    let mode: StoreMode
    switch flags.mode {
    case 0, UInt8(ascii: "S"): mode = flags.hasCas ? .cas(flags.compareCas) : .set
    case UInt8(ascii: "E"): mode = .add
    case UInt8(ascii: "A"): mode = .append
    case UInt8(ascii: "P"): mode = .prepend
    case UInt8(ascii: "R"): mode = flags.hasCas ? .cas(flags.compareCas) : .replace
    default: return refuse("CLIENT_ERROR invalid mode for ms M token")
    }
    if opaqueTooLong { return refuse("CLIENT_ERROR opaque token too long") }
    let fits = store.fits(keyLength: flags.key.count, valueLength: Int(length))
    guard fits else {
      flags.key.withUnsafeBytes { store.refuseTooLargeMeta($0) }
      return refuse("SERVER_ERROR object too large for cache")
    }
    let options = MetaStoreOptions(
      compareCas: flags.compareCas, invalidate: flags.setStale && mode.isCas,
      binaryKey: flags.binaryKey)
    pending = PendingStore(
      mode: mode, key: flags.key, flags: flags.clientFlags, exptime: flags.exptime,
      length: Int(length), noreply: false,
      meta: PendingMetaStore(parts: parts, options: options, quiet: flags.noReply))
    return .done
  }

  /// The data block of an `ms` has arrived (or not yet): store it, reply.
  func completeMetaStore(_ command: PendingStore, _ meta: PendingMetaStore) -> Outcome {
    guard input!.readableBytes >= command.length + 2 else { return .needMoreInput }
    let result = input!.withUnsafeReadableBytes {
      bytes -> Result<(StoreResult, cas: UInt64)?, CacheOperationError> in
      guard
        bytes[command.length] == UInt8(ascii: "\r")
          && bytes[command.length + 1] == UInt8(ascii: "\n")
      else { return .success(nil) }
      return command.key.withUnsafeBytes { key in
        Result { () throws(CacheOperationError) in
          try store.metaStore(
            command.mode, key: key, value: bytes.slice(0..<command.length), flags: command.flags,
            exptime: command.exptime, options: meta.options)
        }
      }
    }
    switch result {
    case .success(nil): reply("CLIENT_ERROR bad data chunk")
    case .success(let stored?): writeMetaStoreReply(stored.0, cas: stored.cas, command, meta)
    case .failure(.frozen):
      let outcome = frozen()
      guard outcome == .done else { return outcome }
    case .failure(.tooLarge): reply("SERVER_ERROR object too large for cache")
    case .failure(_): reply("SERVER_ERROR out of memory storing object")
    }
    input!.moveReaderIndex(forwardBy: command.length + 2)
    pending = nil
    return .done
  }

  /// memcached's _finalize_mset.
  private func writeMetaStoreReply(
    _ result: StoreResult, cas: UInt64, _ command: PendingStore, _ meta: PendingMetaStore
  ) {
    if result == .stored && meta.quiet { return }
    switch result {
    case .stored: output.writeStaticString("HD")
    case .exists: output.writeStaticString("EX")
    case .notFound: output.writeStaticString("NF")
    case .notStored: output.writeStaticString("NS")
    }
    for part in meta.parts {
      switch part {
      case .opaque(let token):
        output.writeStaticString(" ")
        output.writeBytes(token)
      case .key:
        command.key.withUnsafeBytes { writeMetaKey($0, binary: meta.options.binaryKey) }
      case .cas: writeFlag(UInt8(ascii: "c"), cas)
      }
    }
    output.writeStaticString("\r\n")
  }

  // MARK: md

  private func metaDelete(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    let (parsed, early) = metaPrologue(
      line, tokens, tooLong: "CLIENT_ERROR options flags too long",
      flagError: "CLIENT_ERROR invalid or duplicate flag")
    guard let flags = parsed else { return early }
    let start = output.writerIndex
    output.writeStaticString("HD")
    guard writeMissFlags(line, tokens, flags, from: 2) else {
      return metaError("CLIENT_ERROR opaque token too long", since: start)
    }
    let outcome: MetaOutcome
    do {
      outcome = try flags.key.withUnsafeBytes { key throws(CacheOperationError) in
        try store.metaDelete(
          key, compareCas: flags.hasCas ? flags.compareCas : nil, invalidate: flags.setStale,
          exptime: flags.newTTL ? flags.exptime : nil)
      }
    } catch {
      output.moveWriterIndex(to: start)
      return frozen()
    }
    setStatus(outcome == .done ? "HD" : outcome == .notFound ? "NF" : "EX", at: start)
    output.writeStaticString("\r\n")
    if outcome == .done && flags.noReply { output.moveWriterIndex(to: start) }
    return .done
  }

  /// Overwrites the two-letter status reserved at `start`.
  private func setStatus(_ code: StaticString, at start: Int) {
    output.setBytes(UnsafeRawBufferPointer(start: code.utf8Start, count: 2), at: start)
  }

  // MARK: ma

  private func metaArithmetic(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    let (parsed, early) = metaPrologue(
      line, tokens, tooLong: "CLIENT_ERROR options flags too long",
      flagError: "CLIENT_ERROR invalid or duplicate flag")
    guard let flags = parsed else { return early }
    let increment: Bool
    switch flags.mode {
    case 0, UInt8(ascii: "I"), UInt8(ascii: "+"): increment = true
    case UInt8(ascii: "D"), UInt8(ascii: "-"): increment = false
    default: return reply("CLIENT_ERROR invalid mode for ma M token")
    }
    let start = output.writerIndex
    let result = flags.key.withUnsafeBytes { key in
      Result { () throws(CacheOperationError) -> (MetaOutcome, Bool) in
        try store.metaArithmetic(
          key, increment: increment, delta: flags.delta, compareCas: flags.compareCas,
          vivify: flags.vivify, initial: flags.initial
        ) { item, created -> Bool in
          guard let item else { return true }
          return writeArithmeticHit(item, created: created, line, tokens, flags)
        }
      }
    }
    let answer: (MetaOutcome, Bool)
    switch result {
    case .success(let value): answer = value
    case .failure(.nonNumeric):
      return reply("CLIENT_ERROR cannot increment or decrement non-numeric value")
    case .failure(.frozen): return frozen()
    case .failure(_): return reply("SERVER_ERROR out of memory")
    }
    let (outcome, written) = answer
    guard written else { return metaError("CLIENT_ERROR opaque token too long", since: start) }
    if outcome != .done {
      output.writeStaticString(outcome == .notFound ? "NF" : "EX")
      guard writeMissFlags(line, tokens, flags, from: 2) else {
        return metaError("CLIENT_ERROR opaque token too long", since: start)
      }
      output.writeStaticString("\r\n")
    }
    return .done
  }

  /// The reply to an ma that found (or created) its item.
  private func writeArithmeticHit(
    _ item: MetaItem, created: Bool, _ line: UnsafeRawBufferPointer, _ tokens: Tokens,
    _ flags: MetaFlags
  ) -> Bool {
    let start = output.writerIndex
    // The number as memcached's itoa_u64 wrote it, without in-place padding.
    let digits = item.value.prefix { $0 != UInt8(ascii: " ") }
    if flags.value {
      output.writeStaticString("VA ")
      output.writeDecimal(UInt64(digits.count))
    } else {
      output.writeStaticString("HD")
    }
    for index in 2..<tokens.count {
      let token = line.slice(tokens[index])
      switch token[0] {
      case UInt8(ascii: "c"): writeFlag(UInt8(ascii: "c"), item.cas)
      case UInt8(ascii: "t"): writeTTL(item)
      case UInt8(ascii: "T"): item.setExptime(flags.exptime)
      case UInt8(ascii: "N"): if created { item.setExptime(flags.vivifyExptime) }
      case UInt8(ascii: "O"):
        guard token.count <= maxOpaqueLength else { return false }
        output.writeStaticString(" ")
        output.writeBytes(token)
      case UInt8(ascii: "k"):
        flags.key.withUnsafeBytes { writeMetaKey($0, binary: flags.binaryKey) }
      default: break
      }
    }
    output.writeStaticString("\r\n")
    if flags.value {
      output.writeBytes(digits)
      output.writeStaticString("\r\n")
    }
    // A quiet success says nothing (a created item still answers).
    if flags.noReply && !created { output.moveWriterIndex(to: start) }
    return true
  }

  // MARK: me

  private func metaDebug(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    let n = tokens.memcachedCount
    guard n >= 3, tokens[1].count <= CacheLimits.maxKeyLength else {
      return reply("CLIENT_ERROR bad command line format")
    }
    var key = Array(line.slice(tokens[1]))
    if n >= 4 && line.slice(tokens[2]).equals("b") {
      guard let decoded = base64Decode(key) else {
        return reply("CLIENT_ERROR bad command line format")
      }
      key = decoded
    }
    // memcached 1.6.18 counts cmd_meta here only, for each `me` that got
    // as far as the lookup.
    shared.metaCommands.wrappingAdd(1, ordering: .relaxed)
    let text = key.withUnsafeBytes { key in
      store.metaDebug(key) { item -> [UInt8]? in
        guard let item else { return nil }
        var text = Array("ME ".utf8)
        text += item.binaryKey ? base64Encode(item.key) : Array(item.key)
        let remaining = item.remainingSeconds
        let exp = remaining < 0 ? "-1" : String(-remaining)
        text += Array(
          (" exp=\(exp) la=\(item.secondsSinceAccess) cas=\(item.cas)"
            + " fetch=\(item.fetched ? "yes" : "no") cls=\(item.classId) size=\(item.totalSize)")
            .utf8)
        return text
      }
    }
    guard let text else { return reply("EN") }
    output.writeBytes(text)
    output.writeStaticString("\r\n")
    return .done
  }
}

// MARK: base64, as memcached's base64.c

private let base64Alphabet = Array(
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

/// Decoding values: alphabet letters and '=' (as 0); 0x80 for bytes that
/// are skipped, as memcached's decoder skips them.
private let base64Values: [UInt8] = {
  var table = [UInt8](repeating: 0x80, count: 256)
  for (index, letter) in base64Alphabet.enumerated() { table[Int(letter)] = UInt8(index) }
  table[Int(UInt8(ascii: "="))] = 0
  return table
}()

/// memcached's base64_decode: nil where it returns 0 (no letters, a count
/// not a multiple of 4, bad padding).
func base64Decode<C: Collection>(_ text: C) -> [UInt8]? where C.Element == UInt8 {
  let letters = text.filter { base64Values[Int($0)] != 0x80 }
  guard !letters.isEmpty && letters.count % 4 == 0 else { return nil }
  var out: [UInt8] = []
  out.reserveCapacity(letters.count / 4 * 3)
  var block = [UInt8](repeating: 0, count: 4)
  var filled = 0
  var pad = 0
  for letter in letters {
    if letter == UInt8(ascii: "=") { pad += 1 }
    block[filled] = base64Values[Int(letter)]
    filled += 1
    guard filled == 4 else { continue }
    out.append(block[0] << 2 | block[1] >> 4)
    out.append(block[1] << 4 | block[2] >> 2)
    out.append(block[2] << 6 | block[3])
    filled = 0
    if pad > 0 {
      guard pad <= 2 else { return nil }
      out.removeLast(pad)
      break
    }
  }
  return out.isEmpty ? nil : out
}

/// Standard base64 with padding, as memcached's base64_encode.
func base64Encode<C: Collection>(_ bytes: C) -> [UInt8] where C.Element == UInt8 {
  let input = Array(bytes)
  var out: [UInt8] = []
  var index = 0
  while index < input.count {
    let rest = input.count - index
    let b0 = input[index]
    let b1 = rest > 1 ? input[index + 1] : 0
    let b2 = rest > 2 ? input[index + 2] : 0
    out.append(base64Alphabet[Int(b0 >> 2)])
    out.append(base64Alphabet[Int((b0 & 3) << 4 | b1 >> 4)])
    out.append(rest > 1 ? base64Alphabet[Int((b1 & 15) << 2 | b2 >> 6)] : UInt8(ascii: "="))
    out.append(rest > 2 ? base64Alphabet[Int(b2 & 63)] : UInt8(ascii: "="))
    index += 3
  }
  return out
}
