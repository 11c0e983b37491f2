import Testing
import KHOCacheStore
@Test func stub() {}
