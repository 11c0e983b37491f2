import NIOCore
import NIOPosix

/// Building the listening side of a kho-cache server.
public enum CacheServer {
  /// A `ServerBootstrap` whose accepted connections speak memcached's text
  /// protocol to `context.store`. Bind it (`bind(host:port:)`) or give it an
  /// inherited listening socket (`withBoundSocket(_:)`).
  public static func bootstrap(group: any EventLoopGroup, context: CacheServerContext)
    -> ServerBootstrap
  {
    ServerBootstrap(group: group)
      .serverChannelOption(.backlog, value: 1024)
      .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
      .serverChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(acceptBackoffHandler())
        }
      }
      .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
      .childChannelOption(.maxMessagesPerRead, value: 16)
      // Back-pressure on replies: past the high mark the channel is not
      // writable and `MemcacheHandler` stops running commands and reading
      // until the client has taken its replies down to the low mark.
      .childChannelOption(
        .writeBufferWaterMark,
        value: .init(
          low: context.configuration.pendingOutputLimit / 2,
          high: context.configuration.pendingOutputLimit)
      )
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(MemcacheHandler(context: context))
        }
      }
  }

  /// How long accepting pauses after accept(2) fails. NIO's
  /// ServerSocketChannel treats EMFILE, ENFILE, ENOBUFS, ENOMEM and
  /// ECONNABORTED as recoverable: it reports them and, with auto-read,
  /// accepts again at once, so without a back-off a process out of file
  /// descriptors spins on a listener that stays readable. NIO installs
  /// `AcceptBackoffHandler` itself only on its async (NIOAsyncChannel)
  /// bind path, not for `bind(host:port:)`/`withBoundSocket(_:)`.
  static let acceptBackoff: TimeAmount = .milliseconds(20)

  static func acceptBackoffHandler() -> AcceptBackoffHandler {
    AcceptBackoffHandler(shouldForwardIOErrorCaught: false) { error in
      // ECONNABORTED is one client that gave up: accept the next at once.
      error.errnoCode == ECONNABORTED ? nil : acceptBackoff
    }
  }
}

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif
