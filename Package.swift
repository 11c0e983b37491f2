// swift-tools-version: 6.1
import PackageDescription

// Targets in the order of the layers: C surfaces, the FDT format, the system
// layer, the KHO core, the runtime, the control file system, the service
// control that joins them, the cache, the executables, then the tests.
let package = Package(
  name: "swift-kho",
  products: [
    .library(name: "FDT", targets: ["FDT"]),
    .library(name: "KHOSystem", targets: ["KHOSystem"]),
    .library(name: "KHO", targets: ["KHO"]),
    .library(name: "KHORuntime", targets: ["KHORuntime"]),
    .library(name: "KHOControlFS", targets: ["KHOControlFS"]),
    .library(name: "KHOServiceControl", targets: ["KHOServiceControl"]),
    .library(name: "KHOServiceLifecycle", targets: ["KHOServiceLifecycle"]),
    .library(name: "KHOCacheStore", targets: ["KHOCacheStore"]),
    .executable(name: "kho", targets: ["kho"]),
    .executable(name: "kho-cache", targets: ["kho-cache"]),
    .library(name: "KHOCollections", targets: ["KHOCollections"]),
    .executable(name: "collections-bench", targets: ["collections-bench"]),
    .executable(name: "kho-sessions", targets: ["kho-sessions"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    // `swift package generate-documentation`, for the DocC catalogs.
    .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
    .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
  ],
  targets: [
    // MARK: C surfaces (headers and forwarding shims only)

    // Every system call Swift cannot make from Glibc, in the C library's
    // convention (-1 or NULL with errno set); KHOSystem wraps them.
    .target(name: "CKHOSystem"),
    // CRC-32C, with the SSE4.2 instruction where there is one: the cache
    // store's per-item checksums.
    .target(name: "CKHOChecksum"),
    // The messages of the FUSE kernel protocol (linux/fuse.h).
    .target(name: "CFUSEKernel"),
    // Debian's libfdt, only for side-by-side benchmarks.
    .systemLibrary(name: "CLibFDT", pkgConfig: nil, providers: [.apt(["libfdt-dev"])]),

    // MARK: Libraries, lowest layer first

    // The flattened device tree format alone: writer, validating reader, DTS printer.
    .target(name: "FDT"),

    // The system layer: one errno type, one `systemCall` funnel with EINTR
    // and the fault hook, thin wrappers naming the C call, one thread helper.
    .target(name: "KHOSystem", dependencies: ["CKHOSystem"]),

    // The KHO core: arena, scratch, allocator, notifier chain, outgoing and
    // incoming halves, mem cache, attribute model. It knows no process: the
    // runtime hands it the handover's location.
    .target(
      name: "KHO",
      dependencies: [
        "FDT", "KHOSystem",
        .product(name: "Logging", package: "swift-log"),
      ]
    ),

    // The handover runtime: exec in place or overlapped with rollback, named
    // fd handover, sd_notify, the environment.
    .target(
      name: "KHORuntime",
      dependencies: [
        "KHO", "KHOSystem",
        .product(name: "Logging", package: "swift-log"),
      ]
    ),

    // The control file system: the FUSE kernel protocol spoken on /dev/fuse
    // directly, so the next image goes on serving the same connection.
    .target(name: "KHOControlFS", dependencies: ["CFUSEKernel", "KHOSystem"]),

    // A service's control mount: KHOControlFS serving KHO's attributes and
    // the runtime's load/execute.
    .target(
      name: "KHOServiceControl",
      dependencies: [
        "KHO", "KHORuntime", "KHOControlFS", "KHOSystem",
        .product(name: "Logging", package: "swift-log"),
      ]
    ),

    // The runtime as a Service of swift-service-lifecycle's ServiceGroup,
    // with its figures through swift-metrics.
    .target(
      name: "KHOServiceLifecycle",
      dependencies: [
        "KHO", "KHORuntime", "KHOServiceControl",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "Metrics", package: "swift-metrics"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "UnixSignals", package: "swift-service-lifecycle"),
      ]
    ),

    // Example subsystems: a trace ring buffer that survives handover.
    .target(name: "KHOExamples", dependencies: ["KHO", "FDT"]),

    // kho-cache's store: a memcached-style cache whose whole state lives in
    // one caller-given region (the KHO arena in production), addressed by
    // offsets.
    .target(name: "KHOCacheStore", dependencies: ["CKHOChecksum"]),
    // kho-cache's memcached protocol server, on SwiftNIO.
    .target(
      name: "KHOCacheServer",
      dependencies: [
        "KHOCacheStore", "KHOSystem",
        .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ]
    ),

    // MARK: Executables

    // The `kho` command line.
    .executableTarget(
      name: "kho",
      dependencies: [
        "FDT", "KHOSystem", "CKHOSystem",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
    .executableTarget(
      name: "kho-cache",
      dependencies: [
        "FDT", "KHOCacheStore", "KHOCacheServer", "KHO", "KHORuntime", "KHOServiceControl",
        "KHOSystem",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
    // A service that hands over to itself for generations and checks every
    // byte; the exec round-trip tests drive it.
    .executableTarget(
      name: "kho-roundtrip",
      dependencies: ["KHO", "KHORuntime", "KHOExamples", "KHOServiceControl", "KHOSystem"]
    ),
    .executableTarget(name: "fdt-bench", dependencies: ["FDT", "CLibFDT"]),

    // MARK: Arena collections and the Hummingbird example (issue 15)

    // Hash map, ring and array whose storage is one caller-given region,
    // addressed by offsets and checked before trusted.
    .target(
      name: "KHOCollections", dependencies: ["KHO", "FDT", "CKHOChecksum"]),
    // ArenaHashMap and ArenaRing against Dictionary and Deque.
    .executableTarget(
      name: "collections-bench",
      dependencies: [
        "KHOCollections",
        .product(name: "DequeModule", package: "swift-collections"),
      ]
    ),
    // A Hummingbird session store and rate limiter whose state lives in an
    // ArenaHashMap in the KHO arena, upgraded by `kho exec`: a ServiceGroup
    // of HandoverService and its HTTP server.
    .executableTarget(
      name: "kho-sessions",
      dependencies: [
        "KHOCollections", "KHO", "KHORuntime", "KHOServiceLifecycle",
        .product(name: "Hummingbird", package: "hummingbird"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ]
    ),
    .testTarget(
      name: "KHOCollectionsTests", dependencies: ["KHOCollections", "KHO", "KHOSystem"]),

    // MARK: Tests, mirroring the libraries

    .testTarget(name: "FDTTests", dependencies: ["FDT"]),
    .testTarget(name: "KHOSystemTests", dependencies: ["KHOSystem"]),
    .testTarget(name: "KHOTests", dependencies: ["KHO", "KHOSystem"]),
    .testTarget(
      name: "KHORuntimeTests", dependencies: ["KHORuntime", "KHOExamples", "KHOSystem"]),
    .testTarget(name: "KHOControlFSTests", dependencies: ["KHOControlFS", "KHOSystem"]),
    .testTarget(
      name: "KHOServiceLifecycleTests",
      dependencies: [
        "KHOServiceLifecycle", "KHO", "KHORuntime",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
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
  ],
  swiftLanguageModes: [.v6]
)
