import ArgumentParser

/// `kho status M`: what a service's control mount says about its handover.
struct Status: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Show a running service's handover state, read from its control mount.",
    discussion: """
      A service built on swift-kho mounts a small control file system (the \
      counterpart of the kernel's /sys/kernel/kho and kexec files) at a \
      directory M. This reads its files (paths relative to M) and shows:

        boot        KHO if the service started from a handover, else cold
                    (firmware/kho/dt exists only after a handover)
        generation  handovers since the last cold start (kernel/kho/generation;
                    'unknown' for a service without that file)
        active      yes while the state is serialized, ready to hand over
                    (kernel/kho/active); dt: the blob's size meanwhile
        dt_max      the blob buffer's initial size (kernel/kho/dt_max)
        scratch     where the next image boots: offset + length
                    (kernel/kho/scratch_phys, kernel/kho/scratch_len)
        preserved   bytes of memory the blob hands over
                    (kernel/kho/preserved_bytes; 0 while inactive)
        loaded      whether a next image is staged (kernel/kexec_loaded),
                    its command line (kernel/kexec/image) and its mode
                    (kernel/kexec/mode: in-place or overlapped)

      Exits 1, naming the file and the error, if M is not a control mount or a \
      file cannot be read.

      Examples:
        kho status /run/mysvc/kho
        kho status /run/mysvc/kho --format json
      """
  )

  @Argument(help: ArgumentHelp(Service.mountHelp, valueName: "M"))
  var mount: String

  @Option(help: "text (for people) or json (one object, for scripts).")
  var format: OutputFormat = .text

  func run() throws {
    let files = try Service.mount(mount)
    let state: ServiceState
    do {
      state = try ServiceState(files)
    } catch {
      throw Service.fail("\(error)")
    }
    print(format == .json ? state.json : state.text, terminator: "")
  }
}

/// Everything the control mount tells about a service.
struct ServiceState {
  var mount: String
  var active: Bool
  var dtMax: UInt64
  var scratchPhysical: UInt64
  var scratchLength: UInt64
  /// The size of `kernel/kho/dt`, present only while active.
  var dtSize: UInt64?
  var khoBoot: Bool
  /// The size of the incoming blob, after a KHO boot.
  var incomingSize: UInt64?
  /// nil when the service has no `kernel/kho/generation`.
  var generation: UInt64?
  /// nil when the service has no `kernel/kho/preserved_bytes`.
  var preservedBytes: UInt64?
  var loaded: Bool
  var image: [String]?
  var mode: String
  /// `cold`, `handover` or `crash`; nil when the service has no
  /// `kernel/kho/boot`.
  var bootKind: String?
  /// The ranges the service preserves statelessly (a crash keeps them);
  /// nil when it has no `kernel/kho/preservation/ranges`.
  var statelessRanges: [(UInt64, UInt64)]?

  init(_ files: ControlFiles) throws(ControlFiles.Failure) {
    mount = files.mount
    active = try files.flag(ControlFiles.Path.active)
    dtMax = try files.number(ControlFiles.Path.dtMax)
    scratchPhysical = try files.number(ControlFiles.Path.scratchPhysical)
    scratchLength = try files.number(ControlFiles.Path.scratchLength)
    dtSize = active ? files.size(ControlFiles.Path.dt) : nil
    incomingSize = files.size(ControlFiles.Path.firmwareDT)
    khoBoot = incomingSize != nil
    generation = try files.optionalNumber(ControlFiles.Path.generation)
    preservedBytes = try files.optionalNumber(ControlFiles.Path.preservedBytes)
    loaded = try files.flag(ControlFiles.Path.kexecLoaded)
    image = try files.image()
    mode = try files.text(ControlFiles.Path.kexecMode)
    bootKind =
      files.size(ControlFiles.Path.boot) != nil ? try files.text(ControlFiles.Path.boot) : nil
    if files.size(ControlFiles.Path.preservationRanges) != nil {
      statelessRanges = try files.text(ControlFiles.Path.preservationRanges).split(separator: "\n")
        .compactMap { line in
          let parts = line.split(separator: " ")
          guard parts.count == 2, let a = parseCNumber(parts[0]), let b = parseCNumber(parts[1])
          else { return nil }
          return (a, b)
        }
    }
  }

  /// Bytes preserved statelessly.
  var statelessBytes: UInt64? { statelessRanges?.reduce(0) { $0 + ($1.1 &- $1.0) } }

  var text: String {
    func row(_ name: String, _ value: String) -> String {
      name + ":" + String(repeating: " ", count: max(1, 12 - name.count)) + value + "\n"
    }
    var out = row("mount", mount)
    let boot: String
    if bootKind == "crash" {
      boot =
        "after a crash (the previous image died; its arena was kept, its stateless description adopted)"
    } else if khoBoot {
      boot =
        "KHO (handed over; incoming blob of \(incomingSize.map(humanBytes) ?? "?") in firmware/kho/dt)"
    } else {
      boot = "cold"
    }
    out += row("boot", boot)
    out += row("generation", generation.map(String.init) ?? "unknown")
    out += row("active", active ? "yes (state serialized, ready to hand over)" : "no")
    out += row("dt_max", Service.hexBytes(dtMax))
    if let dtSize { out += row("dt", "\(dtSize) bytes") }
    out += row(
      "scratch",
      scratchLength == 0
        ? "none (the service cannot hand over)"
        : "0x\(String(scratchPhysical, radix: 16)) + \(Service.hexBytes(scratchLength))")
    out += row("preserved", preservedBytes.map(Service.hexBytes) ?? "unknown")
    if let statelessRanges, let statelessBytes {
      out += row(
        "stateless",
        "\(Service.hexBytes(statelessBytes)) in \(statelessRanges.count) range(s), kept even across a crash"
      )
    }
    out += row("loaded", loaded ? "yes" : "no")
    if let image { out += row("image", Service.shellQuoted(image)) }
    out += row("mode", mode)
    return out
  }

  var json: String {
    Service.jsonObject([
      ("mount", jsonString(mount)),
      ("khoBoot", Service.json(khoBoot)),
      ("boot", bootKind.map(jsonString) ?? "null"),
      ("statelessBytes", Service.json(statelessBytes)),
      ("incomingSize", Service.json(incomingSize)),
      ("generation", Service.json(generation)),
      ("active", Service.json(active)),
      ("dtMax", Service.json(dtMax)),
      ("dtSize", Service.json(dtSize)),
      (
        "scratch",
        Service.jsonObject([
          ("phys", Service.json(scratchPhysical)), ("len", Service.json(scratchLength)),
        ])
      ),
      ("preservedBytes", Service.json(preservedBytes)),
      ("loaded", Service.json(loaded)),
      ("image", Service.json(image)),
      ("mode", jsonString(mode)),
    ]) + "\n"
  }
}
