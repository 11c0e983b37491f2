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
          try channel.pipeline.syncOperations.addHandler(AcceptOverloadHandler(context: context))
        }
      }
      .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
      .childChannelOption(.maxMessagesPerRead, value: maxMessagesPerRead)
      .childChannelOption(.writeBufferWaterMark, value: replyWaterMark(context))
      .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(MemcacheHandler(context: context))
        }
      }
  }
  /// Reads per readable event on a connection, for accepted and for
  /// handed-over connections alike.
  static let maxMessagesPerRead: UInt = 16

  /// Back-pressure on replies: past the high mark a connection's channel is
  /// not writable, and `MemcacheHandler` stops running commands and reading
  /// until the client has taken its replies down to the low mark.
  static func replyWaterMark(_ context: CacheServerContext)
    -> ChannelOptions.Types.WriteBufferWaterMark
  {
    .init(
      low: context.configuration.pendingOutputLimit / 2,
      high: context.configuration.pendingOutputLimit)
  }
}
