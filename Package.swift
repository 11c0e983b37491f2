// swift-tools-version: 6.1
import PackageDescription

let package = Package(
  name: "swift-kho",
  products: [
    .library(name: "FDT", targets: ["FDT"]),
    .library(name: "KHO", targets: ["KHO"]),
    .library(name: "KHORuntime", targets: ["KHORuntime"]),
    .executable(name: "kho", targets: ["kho"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
  ],
  targets: [
    // The flattened device tree format alone: writer, validating reader, DTS printer.
    .target(name: "FDT"),

    // Syscalls Swift cannot see from Glibc (memfd flags, seals, huge pages).
    .target(name: "CKHOSystem"),

    // The KHO core: arena, scratch, allocator, notifier chain, outgoing and
    // incoming halves, mem cache, attribute model.
    .target(
      name: "KHO",
      dependencies: [
        "FDT", "CKHOSystem",
        .product(name: "Logging", package: "swift-log"),
      ]
    ),

    // C surface of the runtime: fd passing (SCM_RIGHTS), posix_spawn details.
    .target(name: "CKHORuntime"),

    // The handover runtime: exec in place or overlapped with rollback, named
    // fd handover, sd_notify.
    .target(
      name: "KHORuntime",
      dependencies: [
        "KHO", "CKHORuntime",
        .product(name: "Logging", package: "swift-log"),
      ]
    ),

    // The `kho` command line.
    .executableTarget(
      name: "kho",
      dependencies: [
        "FDT",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),

    // Debian's libfdt, only for side-by-side benchmarks.
    .systemLibrary(name: "CLibFDT", pkgConfig: nil, providers: [.apt(["libfdt-dev"])]),
    .executableTarget(
      name: "fdt-bench",
      dependencies: ["FDT", "CLibFDT"]
    ),

    .testTarget(name: "FDTTests", dependencies: ["FDT"]),
    .testTarget(name: "KHOTests", dependencies: ["KHO"]),
    .testTarget(name: "KHORuntimeTests", dependencies: ["KHORuntime"]),
  ],
  swiftLanguageModes: [.v6]
)
