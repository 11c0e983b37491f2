// ArenaHashMap, ArenaRing and ArenaArray against Dictionary, Deque and
// Array: ns/op with ContinuousClock, best of several rounds, in a release
// build (`swift run -c release collections-bench [--keys N]`; 100,000 keys
// by default, fewer to see the cost with every entry in cache).

import DequeModule
import KHOCollections

/// Keeps results alive so the optimizer cannot drop the work measured.
@inline(never) func blackHole<T>(_ value: T) { withExtendedLifetime(value) {} }

/// The best ns per operation of `rounds` runs of `body`, which does `ops`.
func measure(_ name: String, ops: Int, rounds: Int = 5, _ body: () -> Void) -> Double {
  var best = Double.infinity
  for _ in 0..<rounds {
    let elapsed = ContinuousClock().measure(body)
    let ns = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
    best = min(best, ns / Double(ops))
  }
  return best
}

func report(_ rows: [(String, Double, Double)], baseline: String) {
  for (name, ours, theirs) in rows {
    let ratio = ours / theirs
    print(
      "\(name + String(repeating: " ", count: max(0, 36 - name.count))) arena \(format(ours)) ns/op  "
        + "\(baseline) \(format(theirs)) ns/op  ratio \(format(ratio))×")
  }
}

func format(_ value: Double) -> String {
  let scaled = (value * 100).rounded() / 100
  return "\(scaled)"
}

let count: Int = {
  let arguments = CommandLine.arguments
  if let at = arguments.firstIndex(of: "--keys"), at + 1 < arguments.count,
    let n = Int(arguments[at + 1]), n > 0
  {
    return n
  }
  return 100_000
}()
let lookups = 1_000_000
var random = SystemRandomNumberGenerator()
let keys = (0..<count).map { _ in UInt64.random(in: 0...UInt64.max, using: &random) }
let order = (0..<lookups).map { _ in keys[Int.random(in: 0..<count, using: &random)] }
let stringKeys = keys.map { "session-\(String($0, radix: 16))" }
// The lookups use copies of the keys with storage of their own, as keys
// parsed from a request would be: with the very objects that were inserted,
// Dictionary's `==` returns on equal storage pointers without reading a
// byte, which no server sees.
let stringOrder = (0..<lookups).map { _ in
  String(decoding: Array(stringKeys[Int.random(in: 0..<count, using: &random)].utf8), as: UTF8.self)
}
let stringMisses = stringOrder.map { $0 + "-gone" }

let regionBytes = 64 << 20
let region = UnsafeMutableRawBufferPointer.allocate(byteCount: regionBytes, alignment: 64)
region.initializeMemory(as: UInt8.self, repeating: 0)

var rows: [(String, Double, Double)] = []

// Fixed-width keys and values.
let intMap = try ArenaHashMap<UInt64, UInt64>.format(region, bucketCount: count * 2)
var intDictionary: [UInt64: UInt64] = [:]
let intInsertArena = measure("insert", ops: count, rounds: 3) {
  intMap.removeAll()
  for key in keys { intMap[key] = key &+ 1 }
}
let intInsertDictionary = measure("insert", ops: count, rounds: 3) {
  intDictionary = [:]
  for key in keys { intDictionary[key] = key &+ 1 }
}
rows.append(("UInt64→UInt64 insert (100k)", intInsertArena, intInsertDictionary))
rows.append(
  (
    "UInt64→UInt64 lookup hit",
    measure("lookup", ops: lookups) {
      var sum: UInt64 = 0
      for key in order { sum &+= intMap[key] ?? 0 }
      blackHole(sum)
    },
    measure("lookup", ops: lookups) {
      var sum: UInt64 = 0
      for key in order { sum &+= intDictionary[key] ?? 0 }
      blackHole(sum)
    }
  ))
rows.append(
  (
    "UInt64→UInt64 lookup miss",
    measure("miss", ops: lookups) {
      var found = 0
      for key in order where intMap[key &+ 1] != nil { found += 1 }
      blackHole(found)
    },
    measure("miss", ops: lookups) {
      var found = 0
      for key in order where intDictionary[key &+ 1] != nil { found += 1 }
      blackHole(found)
    }
  ))

// Byte-string keys.
let stringMap = try ArenaHashMap<String, UInt64>.format(region, bucketCount: count * 2)
var stringDictionary: [String: UInt64] = [:]
for (i, key) in stringKeys.enumerated() {
  stringMap[key] = UInt64(i)
  stringDictionary[key] = UInt64(i)
}
rows.append(
  (
    "String→UInt64 lookup hit",
    measure("lookup", ops: lookups) {
      var sum: UInt64 = 0
      for key in stringOrder { sum &+= stringMap[key] ?? 0 }
      blackHole(sum)
    },
    measure("lookup", ops: lookups) {
      var sum: UInt64 = 0
      for key in stringOrder { sum &+= stringDictionary[key] ?? 0 }
      blackHole(sum)
    }
  ))
rows.append(
  (
    "String→UInt64 lookup miss",
    measure("miss", ops: lookups) {
      var found = 0
      for key in stringMisses where stringMap[key] != nil { found += 1 }
      blackHole(found)
    },
    measure("miss", ops: lookups) {
      var found = 0
      for key in stringMisses where stringDictionary[key] != nil { found += 1 }
      blackHole(found)
    }
  ))
let iterateArena = measure("iterate", ops: count) {
  var sum: UInt64 = 0
  for (_, value) in stringMap { sum &+= value }
  blackHole(sum)
}
let iterateDictionary = measure("iterate", ops: count) {
  var sum: UInt64 = 0
  for (_, value) in stringDictionary { sum &+= value }
  blackHole(sum)
}
rows.append(("String→UInt64 iterate", iterateArena, iterateDictionary))
report(rows, baseline: "Dictionary")

// Ring against Deque: append with the oldest dropped at a bound, then read all.
let ring = try ArenaRing.format(UnsafeMutableRawBufferPointer(rebasing: region[0..<(1 << 20)]))
let ringBound = 1 << 20 / 32
var deque = Deque<UInt64>()
let ringAppend = measure("append", ops: lookups) {
  for i in 0..<UInt64(lookups) { _ = try? ring.append(i) }
}
let dequeAppend = measure("append", ops: lookups) {
  deque.removeAll(keepingCapacity: true)
  for i in 0..<UInt64(lookups) {
    if deque.count == ringBound { deque.removeFirst() }
    deque.append(i)
  }
}
let ringRead = measure("read", ops: ringBound) {
  var sum: UInt64 = 0
  ring.forEach { _, bytes in sum &+= bytes.loadUnaligned(as: UInt64.self) }
  blackHole(sum)
}
let dequeRead = measure("read", ops: ringBound) {
  var sum: UInt64 = 0
  for value in deque { sum &+= value }
  blackHole(sum)
}
report(
  [
    ("ring append 8-byte record (bounded)", ringAppend, dequeAppend),
    ("ring read", ringRead, dequeRead),
  ],
  baseline: "Deque")

// Array against Array.
let array = try ArenaArray<UInt64>.format(region)
var plain: [UInt64] = []
let arrayAppend = measure("append", ops: lookups) {
  array.removeAll()
  for i in 0..<UInt64(lookups) { try? array.append(i) }
}
let plainAppend = measure("append", ops: lookups) {
  plain.removeAll(keepingCapacity: true)
  for i in 0..<UInt64(lookups) { plain.append(i) }
}
let arrayRead = measure("read", ops: lookups) {
  var sum: UInt64 = 0
  for i in 0..<lookups { sum &+= array[i] ?? 0 }
  blackHole(sum)
}
let plainRead = measure("read", ops: lookups) {
  var sum: UInt64 = 0
  for i in 0..<lookups { sum &+= plain[i] }
  blackHole(sum)
}
report(
  [("array append", arrayAppend, plainAppend), ("array read", arrayRead, plainRead)],
  baseline: "Array")
region.deallocate()
