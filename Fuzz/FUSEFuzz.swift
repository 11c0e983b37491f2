// libFuzzer entry for the control file system's side of the FUSE kernel
// protocol: the decoding of what a read of /dev/fuse returns (`Request`),
// the FUSE_INIT negotiation (`Handshake.answer`), the answers of `Session`
// over a control tree shaped like a service's (`kernel/kho/...`,
// `kernel/kexec/...`, with the real KexecImage, KexecMode and trigger
// parsers) and the reply messages built from them (`Outcome.message`):
// everything the serving loop does between read(2) and write(2).
//
// Compiled with the KHOControlFS sources into one module by Scripts/fuzz.sh
// (and the CFUSEKernel shim by clang):
//   swiftc -sanitize=fuzzer,address -parse-as-library -O \
//     Sources/KHOControlFS/*.swift Fuzz/FUSEFuzz.swift shim.o -o fuse-fuzz
//
// An input is a run of requests as the kernel writes them (fuse_in_header,
// then the opcode's body), each handed to the decoder as the rest of the
// input, as if a read had returned it; the next starts `len` bytes later.
// The first one that does not decode ends the input. Files keep their
// state between the requests of one input (a staged image, the mode...)
// and start afresh for the next input.
//
// Nothing may crash or read out of bounds (ASan); a decoded request must
// lie within what was read; every reply must be one well-formed message:
// its length field equal to its size, the request's unique id, an error
// that is 0 or a negated errno with nothing after the header, and the
// payload the opcode calls for (entry, attributes, open, write, statfs
// structures, at most the count asked of a read, whole dirents for
// READDIR). Only FORGET, BATCH_FORGET and INTERRUPT go unanswered.

import CFUSEKernel
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// What the files of one input share; reset before each input.
struct FuzzState {
  var active = false
  var dtMax: UInt64 = 0xa0_0000
  var imageText: [UInt8] = []
  var image: KexecImage?
  var mode = KexecMode.inPlace
  var executed = 0
}

let state = Mutex(FuzzState())

/// A tree with the paths and the kinds of file of a service's control
/// mount. The KHO attributes proper live in the KHO module, which this
/// target does not build: stand-ins of the same modes and shapes replace
/// them.
let tree: ControlTree = {
  var files: [String: ControlFile] = [:]
  files[ControlPaths.active] = .attribute(
    mode: 0o600,
    show: { Array((state.withLock { $0.active } ? "1\n" : "0\n").utf8) },
    store: { bytes throws(Errno) in
      let text = bytes.last == UInt8(ascii: "\n") ? bytes.dropLast() : bytes[...]
      guard text.elementsEqual("0".utf8) || text.elementsEqual("1".utf8) else {
        throw .invalidArgument
      }
      state.withLock { $0.active = text.first == UInt8(ascii: "1") }
    })
  files[ControlPaths.dtMax] = .attribute(
    mode: 0o600,
    show: { Array("0x\(String(state.withLock { $0.dtMax }, radix: 16))\n".utf8) },
    store: { bytes throws(Errno) in
      var text = String(decoding: bytes, as: UTF8.self)
      if text.hasSuffix("\n") { text.removeLast() }
      if text.hasPrefix("0x") { text.removeFirst(2) }
      guard let value = UInt64(text, radix: 16) else { throw .invalidArgument }
      state.withLock { $0.dtMax = value }
    })
  files[ControlPaths.scratchLength] = .attribute(mode: 0o400) { Array("0x100000\n".utf8) }
  files[ControlPaths.scratchPhysical] = .attribute(mode: 0o400) { Array("0x2000\n".utf8) }
  // Present only while active, as the outgoing blob is.
  files[ControlPaths.dt] = .blob(mode: 0o400) {
    state.withLock { $0.active } ? [UInt8](repeating: 0xd0, count: 5000) : nil
  }
  files[ControlPaths.firmwareDT] = .blob(mode: 0o400) { Array(0..<255) + Array(0..<255) }
  files[ControlPaths.kexecLoaded] = .attribute(mode: 0o444) {
    Array((state.withLock { $0.image } == nil ? "0\n" : "1\n").utf8)
  }
  // As KHOServiceControl stages an image: offset 0 starts anew.
  files[ControlPaths.kexecImage] = .offsetAttribute(
    mode: 0o600, show: { state.withLock { $0.image?.shown ?? [] } },
    store: { offset, bytes throws(Errno) in
      try state.withLock { (s) throws(Errno) in
        let text = offset == 0 ? bytes : s.imageText + bytes
        guard text.count <= 4096 else { throw .argumentListTooLong }
        s.image = try KexecImage(parsing: text)
        s.imageText = text
      }
    })
  files[ControlPaths.kexecMode] = .attribute(
    mode: 0o600, show: { state.withLock { $0.mode.shown } },
    store: { bytes throws(Errno) in
      let mode = try KexecMode(parsing: bytes)
      state.withLock { $0.mode = mode }
    })
  files[ControlPaths.kexecUnload] = .trigger { bytes throws(Errno) in
    try ControlFile.parseTrigger(bytes)
    state.withLock { $0.image = nil }
  }
  files[ControlPaths.kexecExecute] = .trigger { bytes throws(Errno) in
    try ControlFile.parseTrigger(bytes)
    try state.withLock { (s) throws(Errno) in
      guard s.image != nil else { throw Errno(rawValue: ENOEXEC) }
      s.executed += 1
    }
  }
  // A handler that fails, and a file that can be neither read nor written.
  files["kernel/failing"] = ControlFile(
    mode: 0o644, read: { _, _ throws(Errno) in throw .resourceBusy },
    write: { _ throws(Errno) in throw Errno(rawValue: EIO) })
  files["kernel/sealed"] = ControlFile(mode: 0o000, read: nil)
  return ControlTree(files)
}()

let session = Session(tree: tree)
/// FUSE_FUZZ_TRACE=1 prints each request's answer (for reading a reproducer).
let trace = getenv("FUSE_FUZZ_TRACE") != nil
let headerSize = MemoryLayout<fuse_in_header>.size
let outHeaderSize = MemoryLayout<fuse_out_header>.size

@_cdecl("LLVMFuzzerTestOneInput")
public func fuseFuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
  state.withLock { $0 = FuzzState() }
  let input = UnsafeRawBufferPointer(start: data, count: size)
  var offset = 0
  var served = 0
  while offset < input.count && served < 64 {
    let read = UnsafeRawBufferPointer(rebasing: input[offset...])
    guard let request = decode(read) else { break }
    serve(request)
    offset += Int(request.header.len)
    served += 1
  }
  return 0
}

/// `Request(read)`, checked against the bytes: nil exactly when the read is
/// shorter than a header or its length field is out of range, and then a
/// body of exactly that length, copied from the read.
func decode(_ read: UnsafeRawBufferPointer) -> Request? {
  let request = Request(read)
  guard read.count >= headerSize else {
    precondition(request == nil, "decoded a request from \(read.count) bytes")
    return nil
  }
  let length = Int(read.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
  guard (headerSize...read.count).contains(length) else {
    precondition(request == nil, "decoded a request of length \(length) from \(read.count) bytes")
    return nil
  }
  guard let request else { fatalError("refused a request of \(length) of \(read.count) bytes") }
  precondition(Int(request.header.len) == length)
  precondition(request.body.count == length - headerSize, "body of \(request.body.count) bytes")
  precondition(request.body.elementsEqual(read[headerSize..<length]), "body differs from the read")
  return request
}

func serve(_ request: Request) {
  let unique = request.header.unique
  if request.header.opcode == FUSE_INIT.rawValue {
    negotiate(request)
    return
  }
  let opcode = fuse_opcode(rawValue: request.header.opcode)
  let outcome = session.handle(request)
  guard let message = outcome.message(unique: unique) else {
    guard case .noReply = outcome,
      [FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT].contains(opcode)
    else { fatalError("no reply to opcode \(request.header.opcode)") }
    return
  }
  let payload = checkedPayload(message, unique: unique)
  if trace {
    let error = message.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }.error
    print(
      "opcode \(request.header.opcode) node \(request.header.nodeid): error \(error), \(payload?.count ?? 0) bytes"
    )
  }
  guard let payload else { return }  // an error reply
  switch opcode {
  case FUSE_LOOKUP:
    expect(payload, MemoryLayout<fuse_entry_out>.size, request)
    let entry = payload.withUnsafeBytes { $0.loadUnaligned(as: fuse_entry_out.self) }
    precondition(entry.nodeid > ControlTree.rootID && entry.attr.ino == entry.nodeid)
    precondition(tree.present(entry.nodeid) != nil, "LOOKUP found an absent node")
    checkAttributes(entry.attr)
  case FUSE_GETATTR, FUSE_SETATTR:
    expect(payload, MemoryLayout<fuse_attr_out>.size, request)
    let out = payload.withUnsafeBytes { $0.loadUnaligned(as: fuse_attr_out.self) }
    precondition(out.attr.ino == request.header.nodeid)
    checkAttributes(out.attr)
  case FUSE_OPEN, FUSE_OPENDIR:
    expect(payload, MemoryLayout<fuse_open_out>.size, request)
  case FUSE_WRITE:
    expect(payload, MemoryLayout<fuse_write_out>.size, request)
    let asked = request.argument(fuse_write_in.self)!.size
    let out = payload.withUnsafeBytes { $0.loadUnaligned(as: fuse_write_out.self) }
    precondition(out.size == asked && asked <= Session.maxAttributeWrite)
  case FUSE_READ:
    let asked = Int(request.argument(fuse_read_in.self)!.size)
    precondition(payload.count <= asked, "READ of \(asked) answered \(payload.count) bytes")
  case FUSE_READDIR:
    let asked = Int(request.argument(fuse_read_in.self)!.size)
    precondition(payload.count <= asked, "READDIR of \(asked) answered \(payload.count) bytes")
    checkDirents(payload)
  case FUSE_STATFS:
    expect(payload, MemoryLayout<fuse_statfs_out>.size, request)
  case FUSE_ACCESS, FUSE_FLUSH, FUSE_RELEASE, FUSE_RELEASEDIR, FUSE_FSYNC, FUSE_FSYNCDIR,
    FUSE_DESTROY:
    expect(payload, 0, request)
  default:
    fatalError("opcode \(request.header.opcode) succeeded")
  }
}

/// FUSE_INIT: the reply is well-formed, and what is agreed is within what
/// we support and survives the trip to the next image's environment.
func negotiate(_ request: Request) {
  let unique = request.header.unique
  switch Handshake.answer(request, mountPoint: "/run/fuzz/kho") {
  case .retry(let reply):
    let payload = checkedPayload(reply, unique: unique)
    expect(payload ?? [], MemoryLayout<fuse_init_out>.size, request)
  case .refuse(let reply, _):
    precondition(checkedPayload(reply, unique: unique) == nil, "a refusal without an error")
  case .agree(let reply, let agreed):
    let payload = checkedPayload(reply, unique: unique)
    expect(payload ?? [], MemoryLayout<fuse_init_out>.size, request)
    let out = payload!.withUnsafeBytes { $0.loadUnaligned(as: fuse_init_out.self) }
    precondition(out.major == FUSE_KERNEL_VERSION && out.minor == agreed.minor)
    precondition(
      (Handshake.minimumMinor...UInt32(FUSE_KERNEL_MINOR_VERSION)).contains(agreed.minor))
    precondition(agreed.flags & ~Handshake.wantedFlags == 0, "agreed to flags we did not ask for")
    precondition(out.max_write == agreed.maxWrite)
    do {
      let again = try ControlConnectionState(encoded: agreed.encoded)
      precondition(again == agreed, "\(agreed.encoded) parses as \(again)")
    } catch {
      fatalError("\(agreed.encoded) does not parse: \(error)")
    }
  }
}

/// Checks the header of a reply message; returns its payload, or nil for
/// an error reply (which must have none).
func checkedPayload(_ message: [UInt8], unique: UInt64) -> [UInt8]? {
  precondition(message.count >= outHeaderSize, "a reply of \(message.count) bytes")
  let header = message.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }
  precondition(Int(header.len) == message.count, "length field \(header.len) of \(message.count)")
  precondition(header.unique == unique, "reply to \(header.unique) for \(unique)")
  precondition(header.error <= 0 && header.error > -4096, "error \(header.error)")
  if header.error != 0 {
    precondition(message.count == outHeaderSize, "an error reply with a payload")
    return nil
  }
  return Array(message[outHeaderSize...])
}

func expect(_ payload: [UInt8], _ size: Int, _ request: Request) {
  precondition(
    payload.count == size,
    "opcode \(request.header.opcode): \(payload.count) payload bytes, not \(size)")
}

func checkAttributes(_ attr: fuse_attr) {
  let type = attr.mode & 0o170000
  precondition(type == Session.directoryType || type == Session.regularType, "mode \(attr.mode)")
  precondition(attr.nlink >= 1)
}

/// A READDIR payload: whole `fuse_dirent`s, 8-byte aligned, with names of
/// 1-255 bytes without NUL or slash, offsets increasing.
func checkDirents(_ payload: [UInt8]) {
  var index = 0
  var lastOffset: UInt64 = 0
  payload.withUnsafeBytes { raw in
    while index < raw.count {
      precondition(index + 24 <= raw.count, "a dirent header cut at \(index)")
      let ino = raw.loadUnaligned(fromByteOffset: index, as: UInt64.self)
      let offset = raw.loadUnaligned(fromByteOffset: index + 8, as: UInt64.self)
      let length = Int(raw.loadUnaligned(fromByteOffset: index + 16, as: UInt32.self))
      precondition(ino != 0 && offset > lastOffset, "dirent ino \(ino) offset \(offset)")
      precondition((1...255).contains(length), "dirent name of \(length) bytes")
      let size = (24 + length + 7) & ~7
      precondition(index + size <= raw.count, "a dirent cut at \(index)")
      let name = raw[(index + 24)..<(index + 24 + length)]
      precondition(!name.contains(0) && !name.contains(UInt8(ascii: "/")), "dirent name")
      precondition(raw[(index + 24 + length)..<(index + size)].allSatisfy { $0 == 0 })
      lastOffset = offset
      index += size
    }
  }
}
