import NIOCore

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// The listener's answer to accept(2) failing for want of descriptors
/// (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM).
///
/// NIO's ServerSocketChannel treats these errors as recoverable: it reports
/// them down the pipeline and stays registered for readability. But a failed
/// accept leaves its `readPending` set, so the (level-triggered) epoll
/// registration is kept and the still-waiting client wakes the loop again at
/// once: the event loop spins on accept4 (21,000 failures a second here),
/// and NIO's own `AcceptBackoffHandler`, which only withholds `read()`,
/// cannot stop it, since no `read()` is asked for while one is pending.
///
/// So this handler, like memcached and libuv, keeps one descriptor in
/// reserve (`CacheServerContext.reserveDescriptor`): on EMFILE or ENFILE it
/// closes it, so that the accept that follows succeeds, and owes the client
/// it brings in memcached's "ERROR Too many open connections" (the
/// connection's `MemcacheHandler` pays it and closes, and a closing
/// connection takes the reserve back). When there is no reserve to give
/// (or the error is ENOBUFS/ENOMEM), it stops accepting for
/// `pauseAfterFailure` by turning auto-read off, which does unregister
/// the listener, and on again after.
///
/// With `-c` fitted under RLIMIT_NOFILE (kho-cache raises the limit or
/// lowers `-c`), the connection limit is met before the descriptor limit,
/// and this is only the safety net for descriptors used up elsewhere.
final class AcceptOverloadHandler: ChannelInboundHandler {
  typealias InboundIn = NIOAny

  let shared: CacheServerContext
  /// Accepting is off until the pause ends.
  private var paused = false

  /// How long accepting stops when nothing else helps.
  static let pauseAfterFailure: TimeAmount = .milliseconds(20)

  init(context: CacheServerContext) {
    self.shared = context
  }

  func handlerAdded(context: ChannelHandlerContext) {
    shared.acquireReserveDescriptor()
  }

  func channelActive(context: ChannelHandlerContext) {
    // The listener's line in `stats conns`.
    let status = ConnectionStatus(
      remote: nil, address: memcachedText(context.channel.localAddress), listenAddress: nil,
      state: .listening)
    shared.listenerStatus.withLock { $0 = status }
    context.fireChannelActive()
  }

  func errorCaught(context: ChannelHandlerContext, error: Error) {
    guard let error = error as? IOError else {
      context.fireErrorCaught(error)
      return
    }
    switch error.errnoCode {
    case EMFILE, ENFILE:
      // NIO accepts again at once: into the descriptor just freed.
      if shared.releaseReserveDescriptorForRefusal() { return }
      pause(context)
    case ENOBUFS, ENOMEM:
      pause(context)
    default:
      // ECONNABORTED: that client is gone; the next accept is fine.
      break
    }
  }

  private func pause(_ context: ChannelHandlerContext) {
    // Already off (a handover pausing): the listener is unregistered.
    guard !paused, let options = context.channel.syncOptions,
      (try? options.getOption(.autoRead)) == true
    else { return }
    paused = true
    shared.listenDisabledCount.wrappingAdd(1, ordering: .relaxed)
    shared.listenDisabledSince.store(monotonicMicroseconds(), ordering: .relaxed)
    // Unregisters the listener from epoll (a withheld read() would not).
    try? options.setOption(.autoRead, value: false)
    context.eventLoop.assumeIsolated().scheduleTask(in: Self.pauseAfterFailure) {
      self.paused = false
      let since = self.shared.listenDisabledSince.exchange(0, ordering: .relaxed)
      self.shared.listenDisabledMicroseconds.wrappingAdd(
        max(0, monotonicMicroseconds() - since), ordering: .relaxed)
      self.shared.acquireReserveDescriptor()
      // Note: a handover that paused accepting (auto-read off) during these
      // 20 ms is resumed here too; the window is only as long as an EMFILE
      // that the fitted -c should prevent.
      try? context.channel.syncOptions?.setOption(.autoRead, value: true)
    }
  }
}
