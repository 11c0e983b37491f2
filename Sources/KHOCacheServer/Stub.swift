import NIOCore
import NIOPosix
import KHOCacheStore
public enum CacheServerStub {}
