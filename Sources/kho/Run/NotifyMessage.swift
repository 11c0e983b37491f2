#if canImport(Glibc)
  import Glibc
#endif

/// One sd_notify datagram, parsed: newline-separated `KEY=VALUE` fields, as
/// systemd reads them (`man sd_notify`). Unknown keys and lines without `=`
/// are ignored; for a key given twice the first value counts.
struct NotifyMessage: Equatable {
  var ready = false
  var reloading = false
  var stopping = false
  var watchdog = false
  var fdStore = false
  var fdStoreRemove = false
  /// `STATUS=`, made printable (control characters become `?`).
  var status: String?
  /// `MAINPID=` as given; see `mainPID`.
  var mainPIDText: String?
  /// `FDNAME=` as given; see `fdName`.
  var fdNameText: String?

  /// The most bytes a datagram may have, as systemd's `NOTIFY_BUFFER_MAX`
  /// (`PIPE_BUF`).
  static let maximumLength = 4096

  /// The longest `FDNAME=` systemd accepts (`FDNAME_MAX`).
  static let maximumNameLength = 255

  /// Parses `bytes`; `nil` if they hold a NUL byte (systemd refuses those:
  /// a C reader would see a different message).
  init?(_ bytes: ArraySlice<UInt8>) {
    if bytes.contains(0) { return nil }
    for line in bytes.split(separator: UInt8(ascii: "\n")) {
      guard let eq = line.firstIndex(of: UInt8(ascii: "=")) else { continue }
      let key = line[line.startIndex..<eq]
      let value = line[line.index(after: eq)...]
      apply(key: key, value: value)
    }
  }

  private mutating func apply(key: ArraySlice<UInt8>, value: ArraySlice<UInt8>) {
    func equals(_ s: String) -> Bool { key.elementsEqual(s.utf8) }
    let isOne = value.count == 1 && value.first == UInt8(ascii: "1")
    if equals("READY") {
      ready = ready || isOne
    } else if equals("RELOADING") {
      reloading = reloading || isOne
    } else if equals("STOPPING") {
      stopping = stopping || isOne
    } else if equals("WATCHDOG") {
      watchdog = watchdog || isOne
    } else if equals("FDSTORE") {
      fdStore = fdStore || isOne
    } else if equals("FDSTOREREMOVE") {
      fdStoreRemove = fdStoreRemove || isOne
    } else if equals("STATUS") {
      if status == nil { status = Self.printable(value) }
    } else if equals("MAINPID") {
      if mainPIDText == nil { mainPIDText = String(decoding: value.prefix(32), as: UTF8.self) }
    } else if equals("FDNAME") {
      if fdNameText == nil {
        fdNameText = String(decoding: value.prefix(Self.maximumNameLength + 1), as: UTF8.self)
      }
    }
  }

  /// `MAINPID=` as a pid: decimal digits only, greater than 1; `nil` if
  /// absent or malformed (see `mainPIDText`).
  var mainPID: pid_t? {
    guard let text = mainPIDText, !text.isEmpty, text.count <= 10,
      text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
      let value = pid_t(text), value > 1
    else { return nil }
    return value
  }

  /// The name `FDSTORE=1` stores under: `FDNAME=` if valid, `stored` (as
  /// systemd) when absent; `nil` when given but invalid.
  var fdName: String? {
    guard let text = fdNameText else { return "stored" }
    return Self.isValidName(text) ? text : nil
  }

  /// systemd's `fdname_is_valid`, minus the empty name: 1 to 255 printable
  /// ASCII characters, no `:` (the separator of `LISTEN_FDNAMES`).
  static func isValidName(_ name: String) -> Bool {
    let u = name.utf8
    return !u.isEmpty && u.count <= maximumNameLength
      && u.allSatisfy { $0 >= 0x20 && $0 <= 0x7e && $0 != UInt8(ascii: ":") }
  }

  /// `bytes` as text for a log line: at most 200 characters, every byte
  /// outside printable ASCII shown as `?`.
  static func printable(_ bytes: some Collection<UInt8>) -> String {
    String(
      decoding: bytes.prefix(200).map { ($0 >= 0x20 && $0 <= 0x7e) ? $0 : UInt8(ascii: "?") },
      as: UTF8.self)
  }
}
