// The device tree source form of a validated tree, byte-identical to what
// dtc 1.6.1 prints with `dtc -I dtb -O dts` (its `treesource.c`): a blob
// carries no type information, so each value's form is guessed from its
// bytes exactly as dtc guesses it.

extension FlattenedDeviceTree {
  /// The tree in device tree source form, as `dtc -I dtb -O dts` prints it.
  ///
  /// ```swift
  /// var writer = FDTWriter()
  /// try writer.beginNode("")
  /// try writer.property("compatible", string: "kho-v1")
  /// try writer.endNode()
  /// let tree = try FlattenedDeviceTree(bytes: writer.finish())
  /// print(tree.sourceText, terminator: "")
  /// // /dts-v1/;
  /// //
  /// // / {
  /// //	compatible = "kho-v1";
  /// // };
  /// ```
  public var sourceText: String {
    String(decoding: sourceBytes, as: UTF8.self)
  }

  /// ``sourceText`` as bytes, ready to write to a file.
  public var sourceBytes: [UInt8] {
    var out = DTSOutput()
    out.append("/dts-v1/;\n\n")
    for entry in reservations {
      out.append("/memreserve/\t0x")
      out.appendHex(entry.address, width: 16)
      out.append(" 0x")
      out.appendHex(entry.size, width: 16)
      out.append(";\n")
    }
    var level = 0
    var names = DTCNameProperties()
    walk { event in
      switch event {
      case .beginNode(let node):
        if level > 0 { out.append("\n") }
        out.indent(level)
        let name = node.name
        out.append(name.isEmpty ? "/" : name)
        out.append(" {\n")
        level += 1
        names.enter(name)
      case .property(let property):
        let propertyName = property.name
        if names.drops(property, named: propertyName) { return }
        out.indent(level)
        out.append(propertyName)
        property.withValueBytes { out.appendValue($0) }
      case .endNode:
        names.leave()
        level -= 1
        out.indent(level)
        out.append("};\n")
      }
    }
    return out.bytes
  }
}

/// dtc's `name_properties` check, which deletes a node's first `name`
/// property when it equals the node's base name (up to `@`) plus NUL: a
/// leftover of version-1 blobs. Both `dtc -O dts` and `dtc -O dtb` lose it.
struct DTCNameProperties {
  /// Per open node: the value that would be dropped, or nil once the
  /// node's first `name` property was seen.
  private var expected: [[UInt8]?] = []

  mutating func enter(_ nodeName: String) {
    expected.append(Array(nodeName.utf8.prefix { $0 != UInt8(ascii: "@") }) + [0])
  }

  mutating func leave() { expected.removeLast() }

  /// Whether dtc drops `property` (called `name`) of the open node.
  mutating func drops(_ property: FDTProperty, named name: String) -> Bool {
    guard name == "name", let value = expected[expected.count - 1] else { return false }
    expected[expected.count - 1] = nil
    return property.value.elementsEqual(value)
  }
}

/// How dtc shows a value whose type it has to guess.
enum DTSValueForm: Equatable {
  case string
  case cells
  case bytes

  /// dtc's `guess_value_type` without labels: a string (list) when the value
  /// ends with NUL, holds only printable characters, NULs and C escapes, and
  /// no more NULs than other bytes; else cells when the size is a multiple
  /// of 4; else bytes.
  init(guessing value: UnsafeRawBufferPointer) {
    var notString = 0
    var nuls = 0
    for c in value {
      if c == 0 {
        nuls += 1
      } else if !DTSValueForm.isStringByte(c) {
        notString += 1
      }
    }
    if value.last == 0 && notString == 0 && nuls <= value.count - nuls {
      self = .string
    } else if value.count % 4 == 0 {
      self = .cells
    } else {
      self = .bytes
    }
  }

  /// `isprint` in the C locale, or one of `\a \b \t \n \v \f \r`.
  @inline(__always)
  static func isStringByte(_ c: UInt8) -> Bool {
    (0x20...0x7e).contains(c) || (0x07...0x0d).contains(c)
  }
}

struct DTSOutput {
  var bytes: [UInt8] = []

  mutating func append(_ s: String) { bytes.append(contentsOf: s.utf8) }

  mutating func indent(_ level: Int) {
    bytes.append(contentsOf: repeatElement(UInt8(ascii: "\t"), count: level))
  }

  private static let digits = Array("0123456789abcdef".utf8)

  /// `%0<width>x`: at least `width` digits.
  mutating func appendHex(_ value: UInt64, width: Int) {
    var scratch: [UInt8] = []
    var v = value
    repeat {
      scratch.append(Self.digits[Int(v & 0xf)])
      v >>= 4
    } while v != 0
    if scratch.count < width {
      bytes.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: width - scratch.count))
    }
    bytes.append(contentsOf: scratch.reversed())
  }

  /// dtc's `write_propval` for a value with no type markers.
  mutating func appendValue(_ value: UnsafeRawBufferPointer) {
    if value.isEmpty {
      append(";\n")
      return
    }
    append(" =")
    switch DTSValueForm(guessing: value) {
    case .string:
      append(" \"")
      for c in value.dropLast() { appendEscaped(c) }
      append("\"")
    case .cells:
      append(" <")
      for i in stride(from: 0, to: value.count, by: 4) {
        if i > 0 { append(" ") }
        append("0x")
        let cell = UInt32(bigEndian: value.loadUnaligned(fromByteOffset: i, as: UInt32.self))
        appendHex(UInt64(cell), width: 2)
      }
      append(">")
    case .bytes:
      append(" [")
      for (i, b) in value.enumerated() {
        if i > 0 { append(" ") }
        appendHex(UInt64(b), width: 2)
      }
      append("]")
    }
    append(";\n")
  }

  /// dtc's `write_propval_string`, one character.
  private mutating func appendEscaped(_ c: UInt8) {
    switch c {
    case 0x07: append("\\a")
    case 0x08: append("\\b")
    case 0x09: append("\\t")
    case 0x0a: append("\\n")
    case 0x0b: append("\\v")
    case 0x0c: append("\\f")
    case 0x0d: append("\\r")
    case UInt8(ascii: "\\"): append("\\\\")
    case UInt8(ascii: "\""): append("\\\"")
    case 0: append("\\0")
    default:
      // Only printable characters reach here: the guess made it a string.
      bytes.append(c)
    }
  }
}
