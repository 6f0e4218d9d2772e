import SomaCore

extension NodeStore {
    // MARK: Peer table (DESIGN §6 `peers`: peer id → signed node info and score)

    /// Every record of the `peers` column family, keyed by peer id (discovery encodes the values).
    public func peerRecords() async throws -> [(peerID: [UInt8], record: [UInt8])] {
        try await blocking {
            try self.database.scan(self.cf.peers).map { ($0.key, $0.value) }
        }
    }

    /// Writes and deletes peer records in one batch.
    public func writePeerRecords(put: [(peerID: [UInt8], record: [UInt8])], delete: [[UInt8]] = []) async throws {
        guard !put.isEmpty || !delete.isEmpty else { return }
        try await blocking {
            let batch = WriteBatch(for: self.database)
            for key in delete { batch.delete(self.cf.peers, key) }
            for (key, value) in put { batch.put(self.cf.peers, key, value) }
            try self.database.write(batch)
        }
    }
}
