import ArgumentParser

/// `kho load M [--overlapped] -- EXECUTABLE [ARGS...]`: stages the next
/// image, as `kexec -l` does.
struct Load: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Stage the next image of a running service (like kexec -l).",
    discussion: """
      Writes the mode to M/kernel/kexec/mode, then the command line of the \
      next image to M/kernel/kexec/image (one argument per line). Nothing \
      runs yet: 'kho exec M' hands over to the staged image, 'kho unload M' \
      forgets it, and M/kernel/kexec_loaded reads 1 meanwhile.

      EXECUTABLE is found as a shell would (a name without '/' is looked up \
      in $PATH, a relative path is made absolute), and must be an existing \
      executable file; the service is given its absolute path. Everything \
      after '--' is the next image's command line, options included.

      Modes:
        in-place     (default) the service replaces itself with the next
                     image (execve), keeping its process id, like kexec -e
        overlapped   the service starts the next image as a new process,
                     waits until it serves, then exits; if the next image
                     fails, the old one goes on serving

      Examples:
        kho load /run/mysvc/kho -- /usr/bin/mysvc --port 11211
        kho load /run/mysvc/kho --overlapped -- ./mysvc-v2
      """
  )

  @Argument(help: ArgumentHelp(Service.mountHelp, valueName: "M"))
  var mount: String

  @Flag(
    help: "Start the next image as a new process and hand over once it serves (default: in place).")
  var overlapped = false

  @Option(help: "text or json.")
  var format: OutputFormat = .text

  @Argument(
    parsing: .postTerminator,
    help: ArgumentHelp(
      "The next image's executable and its arguments, after '--'.", valueName: "EXECUTABLE ARGS"))
  var command: [String] = []

  func validate() throws {
    if command.isEmpty {
      throw ValidationError("give the next image after '--': kho load M -- EXECUTABLE [ARGS...]")
    }
  }

  func run() throws {
    let files = try Service.mount(mount)
    var arguments = command
    arguments[0] = try Service.resolveExecutable(command[0])
    let mode = overlapped ? "overlapped" : "in-place"
    try Load.stage(files, arguments, mode: mode)
    if format == .json {
      print(
        Service.jsonObject([
          ("mount", jsonString(files.mount)), ("loaded", "true"),
          ("image", Service.json(arguments)), ("mode", jsonString(mode)),
        ]))
    } else {
      print("loaded \(Service.shellQuoted(arguments)) (\(mode)) into \(files.mount)")
    }
  }

  /// Writes `mode` (unless nil), then the image; exit status 1 with the
  /// file and the errno on failure.
  static func stage(_ files: ControlFiles, _ arguments: [String], mode: String?) throws {
    let image = ControlFiles.imageBytes(arguments)
    if image.utf8.count > ControlFiles.maximumWrite {
      throw Service.fail(
        "the next image's command line is \(image.utf8.count) bytes; "
          + "\(files.mount)/\(ControlFiles.Path.kexecImage) takes at most \(ControlFiles.maximumWrite)"
      )
    }
    do {
      if let mode { try files.write(ControlFiles.Path.kexecMode, mode + "\n") }
      try files.write(ControlFiles.Path.kexecImage, image)
    } catch {
      throw Service.fail("\(error)")
    }
  }
}
