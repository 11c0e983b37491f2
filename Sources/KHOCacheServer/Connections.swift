import KHOSystem
import NIOCore
import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

// `stats conns`, as memcached 1.6.18's process_stats_conns prints it: per
// descriptor, in descriptor order, "N:addr", "N:listen_addr" (not for the
// listener), "N:state" and "N:secs_since_last_cmd".

/// memcached's conn_states, named as its state_text names them; the
/// raw values are its enum's.
enum ConnectionState: UInt8 {
  case listening, newCommand, waiting, read, parseCommand, write, nread, swallow, closing
  case multiWrite, closed, watch, ioQueue

  /// memcached's name for the state.
  var text: String {
    switch self {
    case .listening: "conn_listening"
    case .newCommand: "conn_new_cmd"
    case .waiting: "conn_waiting"
    case .read: "conn_read"
    case .parseCommand: "conn_parse_cmd"
    case .write: "conn_write"
    case .nread: "conn_nread"
    case .swallow: "conn_swallow"
    case .closing: "conn_closing"
    case .multiWrite: "conn_mwrite"
    case .closed: "conn_closed"
    case .watch: "conn_watch"
    case .ioQueue: "conn_io_queue"
    }
  }
}

/// What `stats conns` shows of one connection (or the listener). The
/// handler writes it on its own event loop; `stats conns` on another
/// connection's reads it, hence the atomics. The addresses never change.
final class ConnectionStatus: Sendable {
  /// The peer, to find the connection's descriptor (NIO does not give it).
  let remote: SocketAddress?
  /// memcached's `addr`: "tcp:127.0.0.1:37544".
  let address: String
  /// memcached's `listen_addr`: the local end; nil for the listener.
  let listenAddress: String?
  /// A `ConnectionState` raw value.
  let state: Atomic<UInt8>
  /// `monotonicSeconds()` of the last command run (of the start, before one).
  let lastCommand: Atomic<Int64>

  init(remote: SocketAddress?, address: String, listenAddress: String?, state: ConnectionState) {
    self.remote = remote
    self.address = address
    self.listenAddress = listenAddress
    self.state = Atomic(state.rawValue)
    self.lastCommand = Atomic(monotonicSeconds())
  }

  /// A connection's status from its channel's addresses.
  convenience init(connection channel: any Channel) {
    self.init(
      remote: channel.remoteAddress, address: memcachedText(channel.remoteAddress),
      listenAddress: memcachedText(channel.localAddress), state: .read)
  }
}

/// memcached's get_conn_text: "tcp:ADDR:PORT", "tcp6:[ADDR]:PORT".
func memcachedText(_ address: SocketAddress?) -> String {
  guard let address else { return "<null>" }
  let host = address.ipAddress ?? ""
  let port = address.port ?? 0
  switch address {
  case .v4: return "tcp:\(host):\(port)"
  case .v6: return "tcp6:[\(host)]:\(port)"
  case .unixDomainSocket: return "unix:\(address.pathname ?? "")"
  }
}

/// Whole seconds of CLOCK_MONOTONIC_COARSE: memcached's `current_time`
/// resolution, at a fraction of a fine clock's cost (it is read once per
/// read event that ran a command).
func monotonicSeconds() -> Int64 {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
  return Int64(ts.tv_sec)
}

/// CLOCK_MONOTONIC in microseconds, for time_in_listen_disabled_us.
func monotonicMicroseconds() -> Int64 {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000
}

extension MemcacheHandler {
  /// Publishes the connection's state (and, if a command ran, the time)
  /// for `stats conns`: once per input run, not per command.
  func publishStatus(ranCommand: Bool) {
    guard let status else { return }
    status.state.store(currentState.rawValue, ordering: .relaxed)
    if ranCommand { status.lastCommand.store(monotonicSeconds(), ordering: .relaxed) }
  }

  /// The memcached state nearest to what the connection is doing.
  private var currentState: ConnectionState {
    if closing { return .closing }
    if pending != nil { return .nread }
    if swallow > 0 { return .swallow }
    if waitingForRepliesToDrain { return .multiWrite }
    // A command met a frozen store and waits: parsed, not yet done.
    if parked { return .parseCommand }
    if yielded { return .newCommand }
    return .read
  }

  /// `stats conns`: the listener and every admitted connection, by
  /// descriptor. The descriptors come from one pass over /proc/self/fd
  /// (matched by peer address, as a handover finds them), so the reply
  /// costs O(open descriptors), as memcached's walk over `max_fds` does.
  func statsConns() -> Outcome {
    let now = monotonicSeconds()
    status?.lastCommand.store(now, ordering: .relaxed)
    var rows: [(Int32, ConnectionStatus)] = []
    let table = SocketTable.scan()
    for other in shared.connections.statuses() {
      guard let remote = other.remote, let (fd, _) = table.descriptor(peer: remote) else {
        continue
      }
      rows.append((fd.rawValue, other))
    }
    if let listener = shared.listenerStatus.withLock({ $0 }), let fd = listeningDescriptor() {
      rows.append((fd, listener))
    }
    rows.sort { $0.0 < $1.0 }
    for (fd, row) in rows {
      reply("STAT \(fd):addr \(row.address)")
      if let listenAddress = row.listenAddress { reply("STAT \(fd):listen_addr \(listenAddress)") }
      // The connection asking is the one running a command.
      let state =
        row === status
        ? .parseCommand
        : ConnectionState(rawValue: row.state.load(ordering: .relaxed)) ?? .read
      reply("STAT \(fd):state \(state.text)")
      reply("STAT \(fd):secs_since_last_cmd \(now - row.lastCommand.load(ordering: .relaxed))")
    }
    return reply("END")
  }

  /// The descriptor of the listening socket on the configured port.
  private func listeningDescriptor() -> Int32? {
    openDescriptors().first { fd in
      let descriptor = KHOSystem.FileDescriptor(rawValue: fd)
      return fd > 2 && (try? descriptor.isListening()) == true
        && (try? descriptor.localPort()) == shared.configuration.tcpPort
    }
  }
}
