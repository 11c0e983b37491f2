import KHOCacheStore
import NIOCore
import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

// The rest of memcached 1.6.18's text protocol (proto_text.c's
// process_stat, process_stats_detail, process_memlimit_command,
// process_shutdown_command, process_verbosity_command; memcached.c's
// process_stat_settings; items.c/slabs.c's item and slab stats): the
// keys read as memcached's, the figures are kho-cache's own. Where a
// figure has no meaning here (no segmented LRU, no crawler), it is the
// nearest truthful one; README.md lists them.

/// Process-wide settings the protocol changes, as memcached's `settings`.
enum RuntimeSettings {
  /// `verbosity N` (kho-cache logs the same whatever it is).
  static let verbosity = Atomic<Int>(0)
  /// `stats detail on|off`.
  static let detailEnabled = Atomic<Bool>(false)
  /// `slabs automove N`: recorded and reported; kho-cache's page rebalancing
  /// (Rebalance.swift) runs whatever it is.
  static let slabAutomove = Atomic<Int>(1)
}

extension MemcacheHandler {
  /// `stats` and its subcommands.
  func stats(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    if tokens.count == 1 {
      for (name, value) in shared.statsLines() { reply("STAT \(name) \(value)") }
      return reply("END")
    }
    let subcommand = line.slice(tokens[1])
    if subcommand.equals("reset") {
      store.resetStats()
      shared.resetProcessStats()
      PrefixStats.clear()
      return reply("RESET")
    } else if subcommand.equals("detail") {
      return statsDetail(
        tokens.count >= 3 ? line.slice(tokens[2]) : UnsafeRawBufferPointer(start: nil, count: 0))
    } else if subcommand.equals("settings") {
      return statLines(settingsLines())
    } else if subcommand.equals("items") {
      return statLines(itemLines())
    } else if subcommand.equals("slabs") {
      return statLines(slabLines())
    } else if subcommand.equals("cachedump") {
      return cacheDump(line, tokens)
    } else if subcommand.equals("kho") {
      return statLines(shared.khoStatsLines())
    } else if subcommand.equals("conns") {
      return statsConns()
    } else if subcommand.equals("sizes") {
      // memcached tracks item sizes only when started with -o track_sizes.
      return statLines([("sizes_status", "disabled")])
    }
    return reply("ERROR")
  }

  private func statLines(_ lines: [(String, String)]) -> Outcome {
    for (name, value) in lines { reply("STAT \(name) \(value)") }
    return reply("END")
  }

  /// `stats detail on|off|dump`: per-prefix counters, recorded only while on.
  private func statsDetail(_ argument: UnsafeRawBufferPointer) -> Outcome {
    if argument.equals("on") || argument.equals("off") {
      RuntimeSettings.detailEnabled.store(argument.equals("on"), ordering: .relaxed)
      return reply("OK")
    } else if argument.equals("dump") {
      for line in PrefixStats.dump() { reply(line) }
      return reply("END")
    }
    return reply("CLIENT_ERROR usage: stats detail on|off|dump")
  }

  /// memcached's process_stat_settings, the keys of the features kho-cache has.
  private func settingsLines() -> [(String, String)] {
    let configuration = shared.configuration
    let yesNo = { (flag: Bool) in flag ? "yes" : "no" }
    return [
      ("maxbytes", String(store.limitMaxBytes)),
      ("maxconns", String(configuration.maxConnections)),
      ("tcpport", String(configuration.tcpPort)),
      ("udpport", "0"),
      ("inter", configuration.listenAddress),
      ("verbosity", String(RuntimeSettings.verbosity.load(ordering: .relaxed))),
      ("oldest", "0"),
      ("evictions", "on"),
      ("domain_socket", "NULL"),
      ("umask", "700"),
      ("shutdown_command", yesNo(configuration.shutdownEnabled)),
      // The store's own: a store attached after an upgrade keeps the
      // size classes it was formatted with, whatever -n and -f now say.
      ("growth_factor", formatFactor(store.sizeClasses.growthFactor)),
      ("chunk_size", String(store.sizeClasses.chunkSpace)),
      ("num_threads", String(configuration.threads)),
      ("num_threads_per_udp", String(configuration.threads)),
      ("stat_key_prefix", ":"),
      ("detail_enabled", yesNo(RuntimeSettings.detailEnabled.load(ordering: .relaxed))),
      ("reqs_per_event", String(configuration.requestsPerEvent)),
      ("cas_enabled", "yes"),
      ("tcp_backlog", "1024"),
      ("binding_protocol", "ascii"),
      ("auth_enabled_sasl", "no"),
      ("auth_enabled_ascii", "no"),
      ("item_size_max", String(store.itemSizeMax)),
      ("maxconns_fast", "yes"),
      ("hashpower_init", "0"),
      ("slab_reassign", "no"),
      ("slab_automove", String(RuntimeSettings.slabAutomove.load(ordering: .relaxed))),
      ("slab_chunk_max", String(store.pageSize / 2)),
      ("lru_crawler", "no"),
      ("tail_repair_time", "0"),
      ("flush_enabled", yesNo(configuration.flushEnabled)),
      ("dump_enabled", "yes"),
      ("hash_algorithm", "fnv1a_64"),
      ("lru_maintainer_thread", "no"),
      ("lru_segmented", "no"),
      ("temp_lru", "no"),
      ("idle_timeout", "0"),
      ("track_sizes", "no"),
      ("inline_ascii_response", "no"),
      ("memory_file", "(null)"),
    ]
  }

  /// memcached's "%.2f".
  private func formatFactor(_ factor: Double) -> String {
    let hundredths = Int((factor * 100).rounded())
    let fraction = hundredths % 100
    return "\(hundredths / 100)." + (fraction < 10 ? "0" : "") + "\(fraction)"
  }

  /// memcached's item_stats, one LRU per class (no hot/warm segments: every
  /// item counts as cold, every hit as a hit to cold).
  private func itemLines() -> [(String, String)] {
    var lines: [(String, String)] = []
    for info in store.classStats() where info.items > 0 || info.evicted > 0 || info.reclaimed > 0 {
      let prefix = "items:\(info.classId):"
      let figures: [(String, String)] = [
        ("number", String(info.items)), ("number_hot", "0"), ("number_warm", "0"),
        ("number_cold", String(info.items)), ("age_hot", "0"), ("age_warm", "0"),
        ("age", String(info.oldestAge)), ("mem_requested", String(info.requestedBytes)),
        ("evicted", String(info.evicted)), ("evicted_nonzero", String(info.evictedNonzero)),
        ("evicted_time", "0"), ("outofmemory", "0"), ("tailrepairs", "0"),
        ("reclaimed", String(info.reclaimed)), ("expired_unfetched", String(info.expiredUnfetched)),
        ("evicted_unfetched", String(info.evictedUnfetched)), ("evicted_active", "0"),
        ("crawler_reclaimed", "0"), ("crawler_items_checked", "0"),
        ("lrutail_reflocked", "0"), ("moves_to_cold", "0"), ("moves_to_warm", "0"),
        ("moves_within_lru", "0"), ("direct_reclaims", "0"),
        // Hits are counted only for the whole cache (`stats` get_hits).
        ("hits_to_hot", "0"), ("hits_to_warm", "0"), ("hits_to_cold", "0"),
        ("hits_to_temp", "0"),
      ]
      lines += figures.map { (prefix + $0.0, $0.1) }
    }
    return lines
  }

  /// memcached's slabs_stats: the classes that hold pages, then totals.
  private func slabLines() -> [(String, String)] {
    var lines: [(String, String)] = []
    let classes = store.classStats().filter { $0.pages > 0 }
    for info in classes {
      let total = info.pages * info.chunksPerPage
      let figures: [(String, String)] = [
        ("chunk_size", String(info.chunkSize)), ("chunks_per_page", String(info.chunksPerPage)),
        ("total_pages", String(info.pages)), ("total_chunks", String(total)),
        ("used_chunks", String(info.items)), ("free_chunks", String(info.freeChunks)),
        ("free_chunks_end", "0"),
      ]
      lines += figures.map { ("\(info.classId):" + $0.0, $0.1) }
    }
    lines.append(("active_slabs", String(classes.count)))
    lines.append(("total_malloced", String(store.bytesInPages)))
    return lines
  }

  /// `stats cachedump CLASS LIMIT`: memcached's item_cachedump lines,
  /// most recently used first, at most 2 MB of them.
  private func cacheDump(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    guard tokens.memcachedCount >= 5 else { return reply("CLIENT_ERROR bad command line") }
    guard let classId = parseUInt32Truncating(line.slice(tokens[2])),
      let limit = parseUInt32Truncating(line.slice(tokens[3]))
    else { return reply("CLIENT_ERROR bad command line format") }
    guard classId < 64 else { return reply("CLIENT_ERROR Illegal slab id") }
    let entries = store.cacheDump(classId: Int(classId), limit: Int(limit), byteBudget: 2 << 20)
    for entry in entries {
      output.writeStaticString("ITEM ")
      output.writeBytes(entry.key)
      output.writeStaticString(" [")
      output.writeDecimal(UInt64(entry.valueLength))
      output.writeStaticString(" b; ")
      output.writeDecimal(entry.expiresAt)
      output.writeStaticString(" s]\r\n")
    }
    return reply("END")
  }

  /// `slabs automove N|ratio R` and `slabs reassign`, memcached's
  /// process_slabs_command: there is no manual reassignment here.
  func slabs(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    let n = tokens.memcachedCount
    if n == 5 && line.slice(tokens[1]).equals("reassign") {
      return reply("CLIENT_ERROR slab reassignment disabled")
    }
    guard n >= 4 && line.slice(tokens[1]).equals("automove") else { return reply("ERROR") }
    let noreply = isNoreply(line, tokens)
    if line.slice(tokens[2]).equals("ratio") {
      guard n >= 5, Double(String(decoding: line.slice(tokens[3]), as: UTF8.self)) != nil else {
        return reply("ERROR", noreply: noreply)
      }
      return reply("OK", noreply: noreply)
    }
    guard let level = parseUInt32Truncating(line.slice(tokens[2])) else {
      return reply("CLIENT_ERROR bad command line format", noreply: noreply)
    }
    guard level <= 2 else { return reply("ERROR", noreply: noreply) }
    RuntimeSettings.slabAutomove.store(Int(level), ordering: .relaxed)
    return reply("OK", noreply: noreply)
  }

  // MARK: cache_memlimit, shutdown

  /// `cache_memlimit MB`: the arena is sized when the server starts (as
  /// memcached's preallocated memory is), so only the current limit is
  /// accepted; memcached's own checks and words otherwise.
  func cacheMemlimit(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    let noreply = isNoreply(line, tokens)
    guard let megabytes = parseUInt32Truncating(line.slice(tokens[1])) else {
      return reply("ERROR", noreply: noreply)
    }
    if megabytes < 8 {
      return reply("MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m", noreply: noreply)
    }
    if megabytes > 1_000_000_000 {
      return reply("MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes", noreply: noreply)
    }
    if Int(megabytes) << 20 == store.limitMaxBytes { return reply("OK", noreply: noreply) }
    return reply("MEMLIMIT_ADJUST_FAILED out of bounds or unable to adjust", noreply: noreply)
  }

  /// `shutdown [graceful]`, only with -A: closes this connection and stops
  /// the server as SIGINT does (both modes: kho-cache has no graceful drain).
  func shutdown(_ line: UnsafeRawBufferPointer, _ tokens: Tokens) -> Outcome {
    guard shared.configuration.shutdownEnabled else { return reply("ERROR: shutdown not enabled") }
    let n = tokens.memcachedCount
    guard n == 2 || (n == 3 && line.slice(tokens[1]).equals("graceful")) else {
      return reply("CLIENT_ERROR invalid shutdown mode")
    }
    // To the process, not this thread: the signal thread waits for it.
    kill(getpid(), SIGINT)
    return .close
  }
}

// MARK: The binary protocol

extension MemcacheHandler {
  /// memcached's binary protocol starts every request with the magic byte
  /// 0x80; memcached 1.6.18 negotiates it on a connection's first byte
  /// (`-B auto`), and with `-B ascii` waits for a newline that never comes.
  /// kho-cache speaks only the text protocol: it answers a binary client
  /// with a binary error response (status 0x0081 "unknown command", the
  /// request's opcode and opaque, a message as body) and closes, so the
  /// client reports an error instead of hanging. Returns whether it did.
  func refusedBinaryProtocol(_ buffer: ByteBuffer, _ context: ChannelHandlerContext) -> Bool {
    protocolChecked = true
    guard buffer.readableBytes > 0,
      buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == Self.binaryRequestMagic
    else { return false }
    let opcode = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self) ?? 0
    let opaque = buffer.getInteger(at: buffer.readerIndex + 12, as: UInt32.self) ?? 0
    let message = "kho-cache speaks only memcached's text protocol"
    output.writeInteger(Self.binaryResponseMagic)
    output.writeInteger(opcode)
    output.writeInteger(UInt16(0))  // key length
    output.writeInteger(UInt8(0))  // extras length
    output.writeInteger(UInt8(0))  // data type
    output.writeInteger(UInt16(0x0081))  // status: unknown command
    output.writeInteger(UInt32(message.utf8.count))  // body length
    output.writeInteger(opaque)
    output.writeInteger(UInt64(0))  // CAS
    output.writeString(message)
    closing = true
    flushOutput(context)
    return true
  }

  static let binaryRequestMagic: UInt8 = 0x80
  static let binaryResponseMagic: UInt8 = 0x81
}

// MARK: stats detail

/// memcached's stats_prefix.c: gets, hits, sets and deletes per key prefix
/// (the key up to the first ':'; keys without one are not counted), kept
/// while `stats detail on`. In memory only (they restart at an upgrade, as
/// memcached's at a restart), at most `maxPrefixes` prefixes (memcached
/// has no bound; a client must not grow the server without one). Dumped
/// in first-seen order (memcached's is its hash table's).
enum PrefixStats {
  enum Event { case get(hit: Bool), set, delete }

  struct Counts {
    var gets: UInt64 = 0
    var hits: UInt64 = 0
    var sets: UInt64 = 0
    var deletes: UInt64 = 0
  }

  struct Table {
    var order: [[UInt8]] = []
    var counts: [[UInt8]: Counts] = [:]
  }

  static let maxPrefixes = 10_000
  static let table = Mutex(Table())

  static func record(_ key: UnsafeRawBufferPointer, _ event: Event) {
    guard let end = key.firstIndex(of: UInt8(ascii: ":")) else { return }
    let prefix = Array(key[..<end])
    table.withLock { table in
      if table.counts[prefix] == nil {
        guard table.order.count < maxPrefixes else { return }
        table.order.append(prefix)
      }
      switch event {
      case .get(let hit):
        table.counts[prefix, default: Counts()].gets += 1
        if hit { table.counts[prefix, default: Counts()].hits += 1 }
      case .set: table.counts[prefix, default: Counts()].sets += 1
      case .delete: table.counts[prefix, default: Counts()].deletes += 1
      }
    }
  }

  /// `stats reset` forgets every prefix, as memcached's stats_prefix_clear.
  static func clear() { table.withLock { $0 = Table() } }

  /// memcached's "PREFIX %s get %llu hit %llu set %llu del %llu" lines.
  static func dump() -> [String] {
    table.withLock { table in
      table.order.map { prefix in
        let c = table.counts[prefix]!
        return "PREFIX \(String(decoding: prefix, as: UTF8.self)) get \(c.gets) hit \(c.hits)"
          + " set \(c.sets) del \(c.deletes)"
      }
    }
  }
}
