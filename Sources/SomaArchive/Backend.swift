public import AsyncHTTPClient
public import Foundation

/// Where an archive's files live: a local folder, or a prefix of a bucket in an S3-compatible
/// store. Names are relative (`segments/000001.lz4`): 1...512 bytes of `A-Z a-z 0-9 . _ - /`,
/// no empty, `.` or `..` component, so a name read from a manifest cannot leave the archive.
public protocol ArchiveBackend: Sendable, CustomStringConvertible {
    /// Stores `bytes` as `name`, replacing it whole (a reader sees the old file or the new one).
    func write(_ name: String, bytes: [UInt8]) async throws
    /// Stores `size` bytes as `name`, replacing it whole, taking them from `pieces(offset,
    /// length)` a piece at a time (at most ``ArchivePieces/pieceBytes`` each, a few at once):
    /// a file of any size is written with a few pieces in memory. A piece of another length
    /// than asked is an error, and nothing is stored.
    func write(_ name: String, size: Int, pieces: @escaping ArchivePieces.Read) async throws
    /// The file's bytes, or those of `range`, at most `limit`.
    func read(_ name: String, range: Range<Int>?, limit: Int) async throws -> [UInt8]
    /// The file's size; nil when there is no such file.
    func size(_ name: String) async throws -> Int?
    /// The files whose names start with `prefix`, sorted by name (names relative to the archive).
    func list(prefix: String) async throws -> [ObjectInfo]
    /// Removes the file (nothing when there is none).
    func remove(_ name: String) async throws
    /// The size of the reads that suit this store, when small ranged reads cost more than their
    /// bytes (an object store: each request costs the server its authentication and lookups,
    /// and is billed): a reader of many small ranges of a file (``ArchiveSource``) reads the
    /// aligned pages of this size that hold them, each once. Nil: read what is asked.
    var readPageBytes: Int? { get }
}

extension ArchiveBackend {
    /// Nil: a local folder reads what is asked.
    public var readPageBytes: Int? { nil }
}

/// Files written piece by piece (``ArchiveBackend/write(_:size:pieces:)``).
public enum ArchivePieces {
    /// Gives `length` bytes of a file from `offset`.
    public typealias Read = @Sendable (_ offset: Int, _ length: Int) async throws -> [UInt8]
    /// The largest piece asked for: S3's multipart part size.
    public static let pieceBytes = 8 << 20

    /// `pieces(offset, length)`, checked to be `length` bytes.
    static func piece(_ name: String, _ pieces: Read, _ offset: Int, _ length: Int) async throws -> [UInt8] {
        let bytes = try await pieces(offset, length)
        guard bytes.count == length else { throw ArchiveError("\(name): \(bytes.count) bytes given for \(length) at \(offset)") }
        return bytes
    }
}

/// A name or location that cannot be an archive's.
public struct ArchiveError: Error, CustomStringConvertible, Sendable {
    /// What is wrong, naming the file or location.
    public var description: String

    /// An error.
    public init(_ description: String) { self.description = description }
}

/// Archive file names (see ``ArchiveBackend``).
public enum ArchiveName {
    /// Checks `name`.
    /// - Throws: ``ArchiveError`` naming what is wrong.
    public static func check(_ name: String) throws {
        guard (1...512).contains(name.utf8.count) else { throw ArchiveError("an archive file name of \(name.utf8.count) bytes (1...512)") }
        guard name.utf8.allSatisfy({ b in
            (0x41...0x5A).contains(b) || (0x61...0x7A).contains(b) || (0x30...0x39).contains(b) || b == 0x2E || b == 0x5F || b == 0x2D || b == 0x2F
        }) else { throw ArchiveError("archive file name \(name.debugDescription): only A-Z a-z 0-9 . _ - /") }
        for part in name.split(separator: "/", omittingEmptySubsequences: false) where part.isEmpty || part == "." || part == ".." {
            throw ArchiveError("archive file name \(name.debugDescription): an empty, '.' or '..' component")
        }
    }
}

/// An archive in a local folder. Writes go to a temporary file in the same folder, are synced,
/// then renamed over the name: a crash leaves the old file or the new one, never a part.
public struct FolderBackend: ArchiveBackend {
    /// The folder.
    public let root: String

    /// The archive at `root` (created when missing).
    public init(root: String) throws {
        self.root = root.hasSuffix("/") && root.count > 1 ? String(root.dropLast()) : root
        do {
            try FileManager.default.createDirectory(atPath: self.root, withIntermediateDirectories: true)
        } catch {
            throw ArchiveError("\(root): cannot create the archive folder: \(error.localizedDescription)")
        }
    }

    public var description: String { root }

    func path(_ name: String) throws -> String {
        try ArchiveName.check(name)
        return root + "/" + name
    }

    public func write(_ name: String, bytes: [UInt8]) async throws {
        try await replace(name) { handle in try handle.write(contentsOf: bytes) }
    }

    public func write(_ name: String, size: Int, pieces: @escaping ArchivePieces.Read) async throws {
        guard size >= 0 else { throw ArchiveError("\(name): a file of \(size) bytes") }
        try await replace(name) { handle in
            var offset = 0
            while offset < size {
                let length = min(ArchivePieces.pieceBytes, size - offset)
                try handle.write(contentsOf: try await ArchivePieces.piece(name, pieces, offset, length))
                offset += length
            }
        }
    }

    /// Writes `name` through `body` into a temporary file beside it, syncs it, and renames it
    /// over the name; on failure removes the temporary file.
    private func replace(_ name: String, _ body: (FileHandle) async throws -> Void) async throws {
        let target = try path(name)
        let dir = (target as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let temporary = dir + "/.\((target as NSString).lastPathComponent).\(UUID().uuidString).tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: nil) else {
            throw ArchiveError("\(temporary): cannot create (permissions, or the disk is full)")
        }
        do {
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: temporary))
            defer { try? handle.close() }
            try await body(handle)
            try handle.synchronize()
            guard rename(temporary, target) == 0 else { throw ArchiveError("\(target): cannot replace it (errno \(errno))") }
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
    }

    public func read(_ name: String, range: Range<Int>?, limit: Int) async throws -> [UInt8] {
        let p = try path(name)
        guard let handle = FileHandle(forReadingAtPath: p) else { throw ArchiveError("\(p): no such archive file") }
        defer { try? handle.close() }
        let size = Int(try handle.seekToEnd())
        let wanted = range ?? 0..<size
        guard wanted.lowerBound >= 0, wanted.upperBound <= size else { throw ArchiveError("\(p): bytes \(wanted) of a file of \(size)") }
        guard wanted.count <= limit else { throw ArchiveError("\(p): \(wanted.count) bytes, at most \(limit) read") }
        try handle.seek(toOffset: UInt64(wanted.lowerBound))
        let data = try handle.read(upToCount: wanted.count) ?? Data()
        guard data.count == wanted.count else { throw ArchiveError("\(p): \(data.count) bytes read of \(wanted.count)") }
        return Array(data)
    }

    public func size(_ name: String) async throws -> Int? {
        let p = try path(name)
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: p) else { return nil }
        return (attributes[.size] as? NSNumber)?.intValue
    }

    public func list(prefix: String) async throws -> [ObjectInfo] {
        var out: [ObjectInfo] = []
        guard let walker = FileManager.default.enumerator(atPath: root) else { return [] }
        while let relative = walker.nextObject() as? String {
            guard relative.hasPrefix(prefix), !(relative as NSString).lastPathComponent.hasPrefix("."), (try? ArchiveName.check(relative)) != nil else { continue }
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: root + "/" + relative, isDirectory: &isDirectory), !isDirectory.boolValue else { continue }
            let size = try await self.size(relative) ?? 0
            out.append(ObjectInfo(key: relative, size: size, etag: ""))
        }
        return out.sorted { $0.key < $1.key }
    }

    public func remove(_ name: String) async throws {
        let p = try path(name)
        if FileManager.default.fileExists(atPath: p) { try FileManager.default.removeItem(atPath: p) }
    }
}

/// An archive under a prefix of a bucket.
public struct S3Backend: ArchiveBackend {
    /// The bucket's client.
    public let client: S3Client
    /// The prefix (empty, or ending with `/`).
    public let prefix: String

    /// The archive under `prefix` in `client`'s bucket.
    public init(client: S3Client, prefix: String) throws {
        let trimmed = prefix.hasPrefix("/") ? String(prefix.dropFirst()) : prefix
        if !trimmed.isEmpty { try ArchiveName.check(trimmed.hasSuffix("/") ? String(trimmed.dropLast()) : trimmed) }
        self.client = client
        self.prefix = trimmed.isEmpty || trimmed.hasSuffix("/") ? trimmed : trimmed + "/"
    }

    public var description: String { "s3://\(client.bucket)/\(prefix)" }

    func key(_ name: String) throws -> String {
        try ArchiveName.check(name)
        return prefix + name
    }

    /// Files of 16 MiB and more go in parts of 8 MiB.
    public func write(_ name: String, bytes: [UInt8]) async throws {
        let key = try key(name)
        if bytes.count < Self.multipartBytes {
            try await client.put(key, bytes: bytes)
        } else {
            try await client.putMultipart(key, size: bytes.count, partSize: ArchivePieces.pieceBytes) { offset, length in Array(bytes[offset..<(offset + length)]) }
        }
    }

    /// Files of 16 MiB and more go in parts of 8 MiB, 4 at a time; smaller ones in one request.
    public func write(_ name: String, size: Int, pieces: @escaping ArchivePieces.Read) async throws {
        let key = try key(name)
        guard size >= 0 else { throw ArchiveError("\(name): a file of \(size) bytes") }
        if size < Self.multipartBytes {
            try await client.put(key, bytes: try await ArchivePieces.piece(name, pieces, 0, size))
        } else {
            try await client.putMultipart(key, size: size, partSize: ArchivePieces.pieceBytes) { offset, length in
                try await ArchivePieces.piece(name, pieces, offset, length)
            }
        }
    }

    /// The size from which a file is uploaded in parts.
    static let multipartBytes = 16 << 20

    /// 8 MiB, as the part size of uploads (and awscli's ranged downloads): a ranged GET costs
    /// SeaweedFS about 3 ms of CPU besides its bytes, so the 2 MB spans of a sync read one by
    /// one cost it twice the CPU that reading the same bytes in 8 MiB pages does.
    public var readPageBytes: Int? { ArchivePieces.pieceBytes }

    public func read(_ name: String, range: Range<Int>?, limit: Int) async throws -> [UInt8] {
        try await client.get(try key(name), range: range, limit: limit)
    }

    public func size(_ name: String) async throws -> Int? { try await client.head(try key(name))?.size }

    public func list(prefix p: String) async throws -> [ObjectInfo] {
        try await client.list(prefix: prefix + p).compactMap { o in
            let name = String(o.key.dropFirst(prefix.count))
            return (try? ArchiveName.check(name)) != nil ? ObjectInfo(key: name, size: o.size, etag: o.etag) : nil
        }
    }

    public func remove(_ name: String) async throws { try await client.delete(try key(name)) }
}

/// Where an archive is: `s3://BUCKET/PREFIX` (the store's endpoint, region and keys from the
/// configuration or the usual environment variables) or a folder.
public enum ArchiveLocation: Sendable, Equatable {
    /// A bucket and a prefix.
    case s3(bucket: String, prefix: String)
    /// A local folder.
    case folder(String)

    /// Parses `text`.
    /// - Throws: ``ArchiveError`` for an `s3://` URL without a bucket.
    public init(_ text: String) throws {
        if text.hasPrefix("s3://") {
            let rest = text.dropFirst(5)
            let bucket = rest.prefix { $0 != "/" }
            guard !bucket.isEmpty else { throw ArchiveError("\(text): an s3:// location names a bucket: s3://BUCKET/PREFIX") }
            self = .s3(bucket: String(bucket), prefix: String(rest.dropFirst(bucket.count).drop { $0 == "/" }))
        } else {
            guard !text.isEmpty, !text.contains("://") else { throw ArchiveError("\(text): an archive is s3://BUCKET/PREFIX or a folder") }
            self = .folder(text)
        }
    }

    /// The backend: a folder, or the bucket at `endpoint` (default: `AWS_ENDPOINT_URL_S3`, then
    /// `AWS_ENDPOINT_URL`) in `region` (default: `AWS_REGION`, then `AWS_DEFAULT_REGION`, then
    /// us-east-1) with `credentials` (default: the environment's).
    /// - Throws: ``ArchiveError`` when an S3 location has no endpoint or credentials.
    public func backend(
        endpoint: String? = nil, region: String? = nil, credentials: S3Credentials? = nil, http: HTTPClient = S3Client.http,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> any ArchiveBackend {
        switch self {
        case .folder(let path):
            return try FolderBackend(root: path)
        case .s3(let bucket, let prefix):
            func variable(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }
            guard let url = endpoint ?? variable("AWS_ENDPOINT_URL_S3") ?? variable("AWS_ENDPOINT_URL") else {
                throw ArchiveError("s3://\(bucket)/\(prefix): no endpoint: set archive.endpoint or AWS_ENDPOINT_URL (https://s3.REGION.amazonaws.com for AWS)")
            }
            guard let keys = credentials ?? S3Credentials.fromEnvironment(environment) else {
                throw ArchiveError("s3://\(bucket)/\(prefix): no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or archive.accessKeyId and archive.secretAccessKey)")
            }
            let r = region ?? variable("AWS_REGION") ?? variable("AWS_DEFAULT_REGION") ?? "us-east-1"
            do {
                return try S3Backend(client: S3Client(endpoint: url, bucket: bucket, region: r, credentials: keys, http: http), prefix: prefix)
            } catch let e as S3Error {
                throw ArchiveError("s3://\(bucket)/\(prefix): \(e.message)")
            }
        }
    }
}
