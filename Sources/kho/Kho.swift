import ArgumentParser

/// The `kho` command line: blob tools, and (through a service's control
/// mount) the verbs of kexec-tools.
@main
struct Kho: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "kho",
    abstract: "Kexec HandOver for processes: inspect blobs and drive a service's handover.",
    subcommands: [Status.self, Load.self, Unload.self, Exec.self, Run.self, DT.self]
  )
}
