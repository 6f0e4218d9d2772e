import Foundation
public import SomaCore

/// The node's Ed25519 key in `DIR/node.key`: the 32-byte seed in hexadecimal, readable by the
/// owner only.
public enum NodeKey {
    /// Writes a fresh key to `path` (refusing to overwrite one) and returns it.
    public static func create(at path: String) throws -> SigningKey {
        guard !FileManager.default.fileExists(atPath: path) else { throw NodeError("\(path) exists; not overwriting a node key") }
        let key = SigningKey.generate()
        let text = HexCoding.encode(key.seed) + "\n"
        guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw NodeError("cannot write \(path): \(fileProblem(path, writing: true))")
        }
        return key
    }

    /// Reads the key at `path`.
    public static func load(from path: String) throws -> SigningKey {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw NodeError("no node key at \(path): run `soma-node init --data DIR` first")
        }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let seed = HexCoding.decode(text), seed.count == 32 else { throw NodeError("\(path) does not hold a 32-byte hex seed") }
        do {
            return try SigningKey(seed: seed)
        } catch {
            throw NodeError("\(path): \(error)")
        }
    }
}
