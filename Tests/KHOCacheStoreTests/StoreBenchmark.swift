// A throughput measurement of the store alone (no network), run by hand,
// never as a test: in the test target this file is empty. Build it together
// with the store's sources, fully optimised:
//
//   swiftc -O -wmo -parse-as-library -D KHO_STORE_BENCH -module-name StoreBench \
//     Sources/KHOCacheStore/*.swift Tests/KHOCacheStoreTests/StoreBenchmark.swift \
//     -o /tmp/store-bench && /tmp/store-bench
//
// It formats a 64 MiB store, fills it with 100,000 keys of 100-byte values,
// then times random GETs of present keys and SETs overwriting them, and
// prints operations per second (the best of ten rounds: the machine is
// shared, and the best round is the one least disturbed).
//
// Environment: KHO_STORE_BENCH_ROUNDS (10), KHO_STORE_BENCH_OPS (2,000,000
// per round), KHO_STORE_BENCH_ONLY=get|set. Instructions per operation,
// which a busy machine does not disturb: run under
// `valgrind --tool=cachegrind --cache-sim=no` with ROUNDS=1, ONLY=get (or
// set), at OPS=100000 and OPS=300000; the difference of the two "I refs"
// totals divided by 200,000 is the cost of one GET (or SET).
#if KHO_STORE_BENCH
  #if canImport(Glibc)
    import Glibc
  #endif

  @main struct StoreBench {
    static let keyCount = 100_000
    static let keyWidth = 16
    static let rounds = Int(environment("KHO_STORE_BENCH_ROUNDS") ?? "") ?? 10
    static let opsPerRound = Int(environment("KHO_STORE_BENCH_OPS") ?? "") ?? 2_000_000

    /// "get" or "set" runs only that phase (for instruction counts under
    /// `valgrind --tool=cachegrind`, which are steadier than a shared
    /// machine's clock); anything else runs both.
    static let phases = environment("KHO_STORE_BENCH_ONLY") ?? ""

    static func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

    static func main() throws {
      let size = CacheStore.regionSize(memoryLimit: 64 << 20)
      let base = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)!
      let store = try CacheStore.format(region: CacheRegion(base: base, size: size))
      let keys = UnsafeMutableRawBufferPointer.allocate(
        byteCount: keyCount * keyWidth, alignment: 8)
      for index in 0..<keyCount {
        let text = Array("key:\(index)".utf8) + Array(repeating: UInt8(ascii: "."), count: 16)
        keys.baseAddress!.advanced(by: index * keyWidth).copyMemory(from: text, byteCount: keyWidth)
      }
      func key(_ index: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: keys.baseAddress! + index * keyWidth, count: keyWidth)
      }
      let value = [UInt8](repeating: 0x61, count: 100)
      try value.withUnsafeBytes { value in
        for index in 0..<keyCount { _ = try store.store(.set, key: key(index), value: value) }
        // A fixed pseudo-random order, the same for every build measured.
        var order = [Int](repeating: 0, count: opsPerRound)
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for index in 0..<opsPerRound {
          state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
          order[index] = Int((state >> 33) % UInt64(keyCount))
        }
        var bestGet = Double.infinity
        var bestSet = Double.infinity
        var hits = 0
        for _ in 0..<rounds {
          var start = ContinuousClock.now
          if phases != "set" {
            for index in order { hits &+= store.get(key(index)) { $0.value.count } ?? 0 }
          }
          bestGet = min(bestGet, seconds(ContinuousClock.now - start))
          start = ContinuousClock.now
          if phases != "get" {
            for index in order { _ = try store.store(.set, key: key(index), value: value) }
          }
          bestSet = min(bestSet, seconds(ContinuousClock.now - start))
        }
        precondition(
          phases == "set" || hits == rounds * opsPerRound * value.count, "every GET must hit")
        print("GET \(Int(Double(opsPerRound) / bestGet)) ops/s")
        print("SET \(Int(Double(opsPerRound) / bestSet)) ops/s")
      }
      try store.checkConsistency()
      let stats = store.stats()
      print("damaged \(stats["damaged"]) slabs_moved \(stats["slabs_moved"])")
    }

    static func seconds(_ duration: Duration) -> Double {
      Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
    }
  }
#endif
