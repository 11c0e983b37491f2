import ArgumentParser

/// `kho unload M`: forgets the staged next image, as `kexec -u` does.
struct Unload: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Forget the next image staged by 'kho load' (like kexec -u).",
    discussion: """
      Writes 1 to M/kernel/kexec/unload; afterwards M/kernel/kexec_loaded \
      reads 0 and M/kernel/kexec/image is empty. The running service and its \
      KHO state (M/kernel/kho/active) are not touched. Unloading when nothing \
      is staged succeeds.

      Example:
        kho unload /run/mysvc/kho
      """
  )

  @Argument(help: ArgumentHelp(Service.mountHelp, valueName: "M"))
  var mount: String

  @Option(help: "text or json.")
  var format: OutputFormat = .text

  func run() throws {
    let files = try Service.mount(mount)
    do {
      try files.write(ControlFiles.Path.kexecUnload, "1\n")
    } catch {
      throw Service.fail("\(error)")
    }
    if format == .json {
      print(Service.jsonObject([("mount", jsonString(files.mount)), ("loaded", "false")]))
    } else {
      print("unloaded the next image of \(files.mount)")
    }
  }
}
