// swift-tools-version: 6.1
import PackageDescription

let package = Package(
  name: "swift-kho",
  products: [
    .library(name: "FDT", targets: ["FDT"]),
    .library(name: "KHO", targets: ["KHO"]),
    .library(name: "KHORuntime", targets: ["KHORuntime"]),
    .executable(name: "kho", targets: ["kho"]),
    .library(name: "KHOCacheStore", targets: ["KHOCacheStore"]),
    .executable(name: "kho-cache", targets: ["kho-cache"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
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

    // Example subsystems: a trace ring buffer that survives handover.
    .target(name: "KHOExamples", dependencies: ["KHO", "FDT"]),

    // A service that hands over to itself for generations and checks every
    // byte; the exec round-trip tests drive it.
    .executableTarget(
      name: "kho-roundtrip",
      dependencies: ["KHO", "KHORuntime", "KHOExamples", "KHOServiceControl"]
    ),

    // The `kho` command line.
    .executableTarget(
      name: "kho",
      dependencies: [
        "FDT", "CKHORuntime",
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
    .testTarget(name: "KHORuntimeTests", dependencies: ["KHORuntime", "KHOExamples"]),

    // kho-cache: a memcached-protocol cache whose whole state lives in one
    // caller-given region (the KHO arena in production), addressed by offsets.
    // CRC-32C, with the SSE4.2 instruction where there is one: the store's
    // per-item checksums.
    .target(name: "CKHOChecksum"),
    .target(name: "KHOCacheStore", dependencies: ["CKHOChecksum"]),
    .target(
      name: "KHOCacheServer",
      dependencies: [
        "KHOCacheStore",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ]
    ),
    .executableTarget(
      name: "kho-cache",
      dependencies: [
        "FDT", "KHOCacheStore", "KHOCacheServer", "KHO", "KHORuntime", "KHOServiceControl",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
    .testTarget(name: "KHOCacheStoreTests", dependencies: ["KHOCacheStore"]),
    .testTarget(
      name: "KHOCacheServerTests",
      dependencies: [
        "KHOCacheServer", "KHOCacheStore",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOEmbedded", package: "swift-nio"),
      ]
    ),

    // The control file system: the FUSE kernel protocol spoken on /dev/fuse
    // directly, so the next image goes on serving the same connection.
    .target(name: "CFUSEKernel"),
    .target(name: "KHOControlFS", dependencies: ["CFUSEKernel"]),

    // A service's control mount: KHOControlFS serving KHO's attributes and
    // the runtime's load/execute.
    .target(
      name: "KHOServiceControl",
      dependencies: [
        "KHO", "KHORuntime", "KHOControlFS",
        .product(name: "Logging", package: "swift-log"),
      ]
    ),
    .testTarget(name: "KHOControlFSTests", dependencies: ["KHOControlFS"]),
  ],
  swiftLanguageModes: [.v6]
)
