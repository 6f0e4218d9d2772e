import Logging
import SomaArchive
import SomaStore

extension Node {
    /// Continuous archiving (`archive.target`, DESIGN §11): every `archive.intervalSeconds`, the
    /// history segments closed since the archive's manifest was last replaced are copied to it
    /// (an epoch end closes one). What the manifest lists is never written again, so a node
    /// that stops, crashes or loses the store's connection for a while picks up where it
    /// stopped; a failed round is logged and tried again at the next.
    func archiveContinuously(to target: String) async {
        let settings = configuration.archive
        var backend: (any ArchiveBackend)? = nil
        var failures = 0
        while !Task.isCancelled {
            do {
                if backend == nil {
                    backend = try ArchiveLocation(target).backend(endpoint: settings.endpoint, region: settings.region)
                }
                let report = try await ArchiveExport.run(store: store, to: backend!, key: key, snapshots: settings.snapshots)
                if !report.written.isEmpty || !report.snapshots.isEmpty {
                    logger.info("archived", metadata: [
                        "archive": "\(backend!)", "segments": "\(report.written.count)", "through": "\(report.manifest.ranges.last?.last ?? 0)",
                        "snapshots": "\(report.snapshots.map(\.epoch))", "bytes": "\(report.bytes)",
                    ])
                }
                failures = 0
            } catch is CancellationError {
                return
            } catch {
                failures += 1
                // The first failure of a run is a warning, then one line every tenth.
                if failures == 1 || failures % 10 == 0 {
                    logger.warning("archiving failed; trying again", metadata: ["archive": "\(target)", "error": "\(error)", "failures": "\(failures)"])
                }
            }
            try? await Task.sleep(for: .seconds(settings.intervalSeconds))
        }
    }
}
