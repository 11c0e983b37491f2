import Testing

@testable import KHOControlFS

@Suite struct KexecFormatTests {
  @Test func imageParsesLinesOrNULSeparatedArguments() throws {
    let lines = try KexecImage(parsing: Array("/usr/bin/svc\n--port\n11211\n".utf8))
    #expect(lines.arguments == ["/usr/bin/svc", "--port", "11211"])
    #expect(lines.shown == Array("/usr/bin/svc\n--port\n11211\n".utf8))
    let noFinalNewline = try KexecImage(parsing: Array("/bin/true".utf8))
    #expect(noFinalNewline.arguments == ["/bin/true"])
    let nul = try KexecImage(parsing: Array("/bin/echo\0a\nb\0\0".utf8))
    #expect(nul.arguments == ["/bin/echo", "a\nb", ""])
    #expect(nul.shown == Array("/bin/echo\0a\nb\0\0".utf8))
  }

  @Test func imageRefusesEmptyAndRelative() {
    for bad in ["", "\n", "bin/true\n", "\0", "./svc"] {
      #expect(throws: Errno.invalidArgument) { try KexecImage(parsing: Array(bad.utf8)) }
    }
    #expect(throws: Errno.invalidArgument) { try KexecImage(parsing: [0x2f, 0xff, 0x0a]) }
  }

  @Test func modeAndTriggers() throws {
    #expect(try KexecMode(parsing: Array("in-place\n".utf8)) == .inPlace)
    #expect(try KexecMode(parsing: Array("overlapped".utf8)) == .overlapped)
    #expect(KexecMode.overlapped.shown == Array("overlapped\n".utf8))
    #expect(throws: Errno.invalidArgument) { try KexecMode(parsing: Array("fast\n".utf8)) }
    #expect(throws: Never.self) { try ControlFile.parseTrigger(Array("1\n".utf8)) }
    #expect(throws: Errno.invalidArgument) { try ControlFile.parseTrigger(Array("0\n".utf8)) }
    #expect(throws: Errno.invalidArgument) { try ControlFile.parseTrigger([]) }
  }
}
