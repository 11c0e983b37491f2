import ArgumentParser

#if canImport(Glibc)
  import Glibc
#endif

/// `kho exec M [--overlapped] [-- EXECUTABLE [ARGS...]]`: hands a running
/// service over to its next image, as `kexec -e` does, and reports how long
/// the service did not answer.
struct Exec: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Hand a running service over to its next image (like kexec -e), and time it.",
    discussion: """
      Steps, each through a file of the control mount M:

        1. activate  if M/kernel/kho/active reads 0, write 1 to it: the service
                     serializes its state into the blob the next image gets.
                     If this fails (no scratch region, a subsystem refusing),
                     say why and stop; nothing else is changed.
        2. load      if EXECUTABLE is given, stage it as 'kho load' does. If
                     not, use the image staged earlier (an error if none), and
                     change the mode only if --overlapped is given.
        3. execute   write 1 to M/kernel/kexec/execute. The write returns once
                     the next image serves; the service does not answer its
                     control mount meanwhile. Timed with a monotonic clock.
                     If the write loses its connection (ECONNABORTED or
                     ENOTCONN: a next image that could not adopt the
                     control connection mounts the files anew, or the
                     service died), go on to step 4.
        4. wait      until M/kernel/kho/generation has increased (or, for a
                     service without that file, M/kernel/kexec_loaded reads
                     again), for at most --timeout seconds.

      On success prints e.g. 'handed over to generation 3 in 4.2 ms (control \
      mount blocked 4.2 ms)' and exits 0. On failure prints why (the file \
      and its error) and the state the service is in, read back from its \
      files: it rolled back (the old image still serves, same generation, \
      KHO deactivated), or it is still the old image with KHO active, or it \
      does not answer; and exits 1. If this command activated KHO and the \
      load then fails, it deactivates it again.

      Examples:
        kho exec /run/mysvc/kho -- /usr/bin/mysvc --port 11211
        kho exec /run/mysvc/kho --overlapped -- ./mysvc-v2
        kho load /run/mysvc/kho -- /usr/bin/mysvc && kho exec /run/mysvc/kho
      """
  )

  @Argument(help: ArgumentHelp(Service.mountHelp, valueName: "M"))
  var mount: String

  @Flag(
    help: "Start the next image as a new process and hand over once it serves (default: in place).")
  var overlapped = false

  @Option(
    help: ArgumentHelp(
      "How long to wait, after the execute write returned, for the next image to answer.",
      valueName: "seconds"))
  var timeout: Double = 30

  @Option(help: "text or json.")
  var format: OutputFormat = .text

  @Argument(
    parsing: .postTerminator,
    help: ArgumentHelp(
      "The next image's executable and its arguments, after '--' (default: the staged image).",
      valueName: "EXECUTABLE ARGS"))
  var command: [String] = []

  func validate() throws {
    if !(timeout > 0) { throw ValidationError("--timeout must be a positive number of seconds") }
  }

  func run() throws {
    let files = try Service.mount(mount)
    let active: Bool
    let loaded: Bool
    let generationBefore: UInt64?
    do {
      active = try files.flag(ControlFiles.Path.active)
      loaded = try files.flag(ControlFiles.Path.kexecLoaded)
      generationBefore = try files.optionalNumber(ControlFiles.Path.generation)
    } catch {
      throw Service.fail("\(error)")
    }

    var arguments: [String]?
    if !command.isEmpty {
      var a = command
      a[0] = try Service.resolveExecutable(command[0])
      arguments = a
    } else if !loaded {
      throw Service.fail(
        "nothing loaded; give -- EXECUTABLE (or stage it first with kho load \(files.mount) -- EXECUTABLE)"
      )
    }

    var report = Report(files: files, format: format, generationBefore: generationBefore)
    report.image = arguments

    // 1. Activate.
    if !active {
      do {
        try files.write(ControlFiles.Path.active, "1\n")
      } catch {
        throw report.failure(stage: "activate", error)
      }
      report.activated = true
    }

    // 2. Load.
    do {
      if let arguments {
        let mode = overlapped ? "overlapped" : "in-place"
        try stage(files, arguments, mode: mode)
      } else if overlapped {
        try files.write(ControlFiles.Path.kexecMode, "overlapped\n")
      }
    } catch {
      if report.activated { try? files.write(ControlFiles.Path.active, "0\n") }
      throw report.failure(stage: "load", error)
    }
    report.mode = try? files.text(ControlFiles.Path.kexecMode)

    // 3. Execute.
    let start = Service.now()
    do {
      try files.write(ControlFiles.Path.kexecExecute, "1\n")
    } catch  where error.errno == ECONNABORTED || error.errno == ENOTCONN {
      // The connection that carried the write is gone: the old image died,
      // or the next one could not adopt the connection and mounted the
      // files anew. Which one, the wait below tells.
      report.remounted = true
    } catch {
      report.blocked = Service.milliseconds(start, Service.now())
      throw report.failure(stage: "execute", error)
    }
    let returned = Service.now()
    report.blocked = Service.milliseconds(start, returned)

    // 4. Wait until the next image answers.
    let deadline = returned + UInt64(timeout * 1_000_000_000)
    var lastError: ControlFiles.Failure?
    while true {
      do {
        if let before = generationBefore {
          if let g = try files.optionalNumber(ControlFiles.Path.generation), g > before {
            report.generation = g
            break
          }
          lastError = nil
        } else {
          _ = try files.flag(ControlFiles.Path.kexecLoaded)
          report.generation = try files.optionalNumber(ControlFiles.Path.generation)
          break
        }
      } catch {
        lastError = error
      }
      if Service.now() >= deadline {
        report.total = Service.milliseconds(start, Service.now())
        if let lastError { throw report.failure(stage: "wait", lastError) }
        throw report.failure(
          stage: "wait",
          message:
            "\(files.mount)/\(ControlFiles.Path.kexecExecute) succeeded, but "
            + "\(ControlFiles.Path.generation) did not increase within \(timeout) s")
      }
      usleep(1000)
    }
    report.total = Service.milliseconds(start, Service.now())
    report.success()
  }

  private func stage(_ files: ControlFiles, _ arguments: [String], mode: String) throws(ControlFiles
    .Failure)
  {
    let image = ControlFiles.imageBytes(arguments)
    if image.utf8.count > ControlFiles.maximumWrite {
      throw ControlFiles.Failure(
        path: files.mount + "/" + ControlFiles.Path.kexecImage, errno: E2BIG,
        hint:
          "the next image's command line is \(image.utf8.count) bytes; the file takes at most \(ControlFiles.maximumWrite)"
      )
    }
    try files.write(ControlFiles.Path.kexecMode, mode + "\n")
    try files.write(ControlFiles.Path.kexecImage, image)
  }

  /// What `exec` did, for the final line or the failure report.
  struct Report {
    var files: ControlFiles
    var format: OutputFormat
    var generationBefore: UInt64?
    var image: [String]?
    var mode: String?
    var activated = false
    var generation: UInt64?
    /// How long the execute write took, in milliseconds.
    var blocked: Double?
    /// The execute write lost its connection: a next image that serves
    /// mounted the control files anew.
    var remounted = false
    /// From the execute write until the next image answered, in milliseconds.
    var total: Double?

    private var timing: [(String, String)] {
      [
        ("handoverMs", total.map(Service.jsonMilliseconds) ?? "null"),
        ("blockedMs", blocked.map(Service.jsonMilliseconds) ?? "null"),
      ]
    }

    func success() {
      if format == .json {
        print(
          Service.jsonObject(
            [
              ("ok", "true"), ("mount", jsonString(files.mount)),
              ("generationBefore", Service.json(generationBefore)),
              ("generation", Service.json(generation)),
              ("activated", Service.json(activated)), ("image", Service.json(image)),
              ("mode", Service.json(mode)), ("remounted", Service.json(remounted)),
            ] + timing))
        return
      }
      let times =
        "in \(Service.formatMilliseconds(total ?? 0)) "
        + "(control mount blocked \(Service.formatMilliseconds(blocked ?? 0)))"
      let note = remounted ? "; the next image mounted the control files anew" : ""
      if let generation {
        print("handed over to generation \(generation) \(times)\(note)")
      } else {
        print(
          "handed over \(times); generation unknown (the service has no \(ControlFiles.Path.generation))\(note)"
        )
      }
    }

    func failure(stage: String, _ error: ControlFiles.Failure) -> ExitCode {
      failure(stage: stage, message: "\(error)", errno: error.errno)
    }

    /// Reports a failure at `stage` with the state read back from the
    /// mount; returns exit status 1.
    func failure(stage: String, message: String, errno: Int32? = nil) -> ExitCode {
      let after: ServiceState?
      let afterError: String?
      do {
        after = try ServiceState(files)
        afterError = nil
      } catch {
        after = nil
        afterError = "\(error)"
      }
      let generationText = { (g: UInt64?) in g.map { "generation \($0)" } ?? "generation unknown" }
      let state: String
      let detail: String
      if let after {
        let activeText =
          after.active
          ? "KHO still active (write 0 to \(files.mount)/\(ControlFiles.Path.active) to abort it)"
          : "KHO inactive (active = 0)"
        if let g = after.generation, let b = generationBefore, g > b {
          state = "handed-over"
          detail = "the next image is serving anyway as generation \(g)"
        } else if stage == "activate" || stage == "load" {
          state = "unchanged"
          detail =
            "nothing was executed: the service is still the old image "
            + "(\(generationText(after.generation))), \(activeText)"
        } else if !after.active {
          state = "rolled-back"
          detail =
            "the service rolled back: the old image is still serving "
            + "(\(generationText(after.generation)), unchanged), \(activeText)"
        } else {
          state = "old-image"
          detail =
            "the old image is still serving (\(generationText(after.generation)), unchanged), "
            + activeText
        }
      } else {
        state = "unreachable"
        detail = "the service does not answer on its control mount: \(afterError ?? "?")"
      }
      if format == .json {
        print(
          Service.jsonObject(
            [
              ("ok", "false"), ("mount", jsonString(files.mount)), ("stage", jsonString(stage)),
              ("error", jsonString(message)), ("errno", errno.map { String($0) } ?? "null"),
              ("state", jsonString(state)), ("detail", jsonString(detail)),
              ("generationBefore", Service.json(generationBefore)),
              ("generation", Service.json(after?.generation)),
              ("active", Service.json(after?.active)),
              ("activated", Service.json(activated)), ("image", Service.json(image)),
            ] + timing))
      }
      FileIO.warn("kho: \(stage) failed: \(message)")
      FileIO.warn("kho: \(detail)")
      return ExitCode(1)
    }
  }
}
