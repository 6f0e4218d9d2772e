// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "soma-node",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "SomaCore", targets: ["SomaCore"]),
        .library(name: "SomaStore", targets: ["SomaStore"]),
        .library(name: "SomaNet", targets: ["SomaNet"]),
        .library(name: "SomaSync", targets: ["SomaSync"]),
        .library(name: "SomaDiscovery", targets: ["SomaDiscovery"]),
        .library(name: "SomaGossip", targets: ["SomaGossip"]),
        .library(name: "SomaNode", targets: ["SomaNode"]),
        .library(name: "SomaDevnet", targets: ["SomaDevnet"]),
        .library(name: "SomaArchive", targets: ["SomaArchive"]),
        .executable(name: "soma-node", targets: ["soma-node"]),
        .executable(name: "soma-bench", targets: ["soma-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
    ],
    targets: [
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        .target(
            name: "SomaCore",
            dependencies: ["COpenSSL", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict
        ),
        .systemLibrary(
            name: "CRocksDB",
            pkgConfig: "rocksdb",
            providers: [.apt(["librocksdb-dev"])]
        ),
        .systemLibrary(name: "CMalloc"),
        .systemLibrary(
            name: "CJemalloc",
            pkgConfig: "jemalloc",
            providers: [.apt(["libjemalloc-dev"])]
        ),
        .systemLibrary(
            name: "CLZ4",
            pkgConfig: "liblz4",
            providers: [.apt(["liblz4-dev"])]
        ),
        .target(
            name: "SomaStore",
            dependencies: [
                "SomaCore", "CRocksDB", "CLZ4", "CMalloc",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "SomaNet",
            dependencies: [
                "SomaCore", "SomaStore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "SomaSync",
            dependencies: [
                "SomaCore", "SomaStore", "SomaNet",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "SomaDiscovery",
            dependencies: [
                "SomaCore", "SomaStore", "SomaNet",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "SomaGossip",
            dependencies: [
                "SomaCore", "SomaStore", "SomaNet",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "SomaNode",
            dependencies: [
                "SomaCore", "SomaStore", "SomaNet", "SomaSync", "SomaDiscovery", "SomaGossip", "SomaArchive",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "SomaDevnet",
            dependencies: ["SomaCore"],
            swiftSettings: strict
        ),
        .target(
            name: "SomaArchive",
            dependencies: [
                "SomaCore", "SomaStore", "SomaNet", "SomaSync",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "soma-node",
            dependencies: [
                "SomaCore", "SomaStore", "SomaNet", "SomaSync", "SomaDiscovery", "SomaGossip", "SomaNode", "SomaDevnet", "SomaArchive", "CJemalloc",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "soma-bench",
            dependencies: [
                "SomaCore", "SomaStore", "SomaNet", "SomaGossip", "SomaDevnet", "CJemalloc",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SomaCoreTests",
            dependencies: ["SomaCore", "SomaDevnet", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict
        ),
        .target(
            name: "SomaTestSupport",
            dependencies: ["SomaStore", "SomaDevnet"],
            path: "Tests/SomaTestSupport",
            swiftSettings: strict
        ),
        .testTarget(
            name: "SomaStoreTests",
            dependencies: ["SomaCore", "SomaStore", "SomaDevnet", "SomaTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SomaNetTests",
            dependencies: [
                "SomaCore", "SomaNet", "SomaStore", "SomaDevnet", "SomaTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SomaSyncTests",
            dependencies: [
                "SomaCore", "SomaNet", "SomaStore", "SomaSync", "SomaDevnet", "SomaTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SomaGossipTests",
            dependencies: [
                "SomaCore", "SomaNet", "SomaStore", "SomaGossip", "SomaTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SomaDiscoveryTests",
            dependencies: [
                "SomaCore", "SomaNet", "SomaStore", "SomaDiscovery", "SomaTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SomaNodeTests",
            dependencies: [
                "SomaNode", "SomaStore", "SomaDiscovery", "SomaCore", "SomaDevnet", "SomaTestSupport", "SomaNet", "SomaSync", "SomaGossip",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "SomaCore", "SomaStore", "SomaNet", "SomaDevnet", "SomaNode", "SomaTestSupport",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SomaArchiveTests",
            dependencies: [
                "SomaArchive", "SomaCore", "SomaStore", "SomaSync", "SomaDevnet", "SomaTestSupport",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SomaDevnetTests",
            dependencies: ["SomaCore", "SomaDevnet"],
            swiftSettings: strict
        ),
    ],
    swiftLanguageModes: [.v6]
)

// Fuzz targets (docs/RELIABILITY.md): one executable, `soma-fuzz`, dispatching on the target name
// in SOMA_FUZZ_TARGET. `tools/fuzz` builds it with `-DSOMA_FUZZ -sanitize=fuzzer,address`
// (libFuzzer's entry point); a normal build compiles it as a replay tool, `soma-fuzz TARGET FILE...`.
package.products.append(.executable(name: "soma-fuzz", targets: ["soma-fuzz"]))
package.targets.append(
    .executableTarget(
        name: "soma-fuzz",
        dependencies: [
            "SomaCore", "SomaStore", "SomaNet", "SomaDiscovery", "SomaGossip", "SomaNode", "SomaDevnet", "SomaArchive",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
        ],
        swiftSettings: strict
    )
)
