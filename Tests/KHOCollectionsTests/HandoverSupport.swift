import KHO

#if canImport(Glibc)
  import Glibc
#endif

/// The arena every handover test of this target uses.
let handoverTestOptions = KHOOptions(arenaSize: 64 << 20, scratchSize: 1 << 20)

/// The next image's KHO: `old` serializes and loads, and a second KHO boots
/// from a duplicate of its arena fd (as the next image does from the
/// inherited one).
func handOver(_ old: KHO) throws -> KHO {
  try old.outgoing.serialize()
  var location = try old.load()
  location.fd = dup(location.fd)
  return try KHO.boot(handoverTestOptions, handover: .success(location))
}
