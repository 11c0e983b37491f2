import KHOSystem
import Testing

@testable import KHORuntime

#if canImport(Glibc)
  import Glibc
#endif

/// A parcel of more descriptors than one message carries arrives whole and
/// in order; one cut short is refused and closed, never half trusted.
@Suite struct DescriptorBatchTests {
  /// `count` pipes' write ends, whose read ends tell them apart.
  static func pipes(_ count: Int) throws -> [(read: FileDescriptor, write: FileDescriptor)] {
    try (0..<count).map { _ in try FileDescriptor.pipe() }
  }

  @Test func moreThanOneMessageOfDescriptorsArrivesInOrder() throws {
    let count = 2 * FileDescriptor.maxDescriptorsPerMessage + 17
    let ends = try Self.pipes(count)
    defer {
      for end in ends {
        end.read.closeIgnoringErrors()
        end.write.closeIgnoringErrors()
      }
    }
    let blob = try FileDescriptor.memfdCreate(name: "parcel-test", flags: .closeOnExec)
    let (sending, receiving) = try FileDescriptor.socketPair()
    defer {
      sending.closeIgnoringErrors()
      receiving.closeIgnoringErrors()
    }
    try DescriptorBatch.send(
      DescriptorParcel(blob: blob, descriptors: ends.map(\.write)), on: sending)
    blob.closeIgnoringErrors()
    let parcel = try #require(DescriptorBatch.receiveAll(from: receiving))
    defer { parcel.closeAll() }
    #expect(parcel.descriptors.count == count)
    // Each received descriptor is the write end of the pipe at its index.
    for (index, received) in parcel.descriptors.enumerated() {
      try received.writeAll([UInt8(index & 0xff)])
      #expect(try ends[index].read.read(upTo: 1) == [UInt8(index & 0xff)])
    }
  }

  @Test func aParcelWithoutItsEndIsRefused() throws {
    let ends = try Self.pipes(3)
    defer {
      for end in ends {
        end.read.closeIgnoringErrors()
        end.write.closeIgnoringErrors()
      }
    }
    let (sending, receiving) = try FileDescriptor.socketPair()
    defer { receiving.closeIgnoringErrors() }
    // Only a batch, no blob and no end marker, then the sender goes away.
    var header = [UInt8](repeating: 0, count: DescriptorBatch.headerSize)
    header.withUnsafeMutableBytes { raw in
      raw.storeBytes(of: DescriptorBatch.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
      raw.storeBytes(of: UInt32(2).littleEndian, toByteOffset: 4, as: UInt32.self)
      raw.storeBytes(of: UInt32(3).littleEndian, toByteOffset: 8, as: UInt32.self)
    }
    _ = try sending.sendMessage(header, descriptors: ends.map(\.write))
    sending.closeIgnoringErrors()
    #expect(DescriptorBatch.receiveAll(from: receiving) == nil)
  }
}
