import KHOSystem

/// Runs KHOSystem wrappers, reporting their failure as
/// ``ControlMountError/system(_:)``.
@inline(__always)
func checked<T>(_ body: () throws(SystemCallError) -> T) throws(ControlMountError) -> T {
  do { return try body() } catch { throw .system(error) }
}

/// Writes one whole message to /dev/fuse in one call, as the kernel
/// requires for a reply.
func writeMessage(_ fd: Int32, _ bytes: [UInt8]) throws(SystemCallError) {
  _ = try FileDescriptor(rawValue: fd).write(bytes)
}
