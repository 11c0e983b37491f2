import KHOCacheStore
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// A shared memory file (a memfd stand-in: created in /dev/shm and
/// unlinked at once) that can be mapped several times, at different
/// addresses, as the next image would map the arena.
final class SharedMemory {
  let fd: Int32
  let size: Int
  private var mappings: [UnsafeMutableRawPointer] = []

  init(size: Int) {
    let name = "/dev/shm/kho-cache-test-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
    fd = open(name, O_RDWR | O_CREAT | O_EXCL, 0o600)
    precondition(fd >= 0, "open \(name): errno \(errno)")
    unlink(name)
    precondition(ftruncate(fd, off_t(size)) == 0)
    self.size = size
  }

  /// A new mapping of the whole file.
  func map() -> CacheRegion {
    let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)!
    precondition(base != MAP_FAILED)
    mappings.append(base)
    return CacheRegion(base: base, size: size)
  }

  deinit {
    for base in mappings { munmap(base, size) }
    close(fd)
  }
}

/// A clock the test moves by hand.
final class ManualClock: Sendable {
  let nanoseconds = Mutex<UInt64>(1_000_000_000)
  let wall = Mutex<Int64>(1_700_000_000)

  func advance(seconds: UInt64) {
    nanoseconds.withLock { $0 += seconds * 1_000_000_000 }
    wall.withLock { $0 += Int64(seconds) }
  }

  var source: CacheClockSource {
    CacheClockSource(
      monotonicNanoseconds: { self.nanoseconds.withLock { $0 } },
      wallSeconds: { self.wall.withLock { $0 } })
  }
}

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
