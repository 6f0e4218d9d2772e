extension BCSReader {
    /// Skips `count` bytes.
    @inlinable
    public mutating func skip(_ count: Int) throws(CoreError) {
        try need(count)
        offset += count
    }

    /// Reads one encoded ``Object`` as it is, without decoding its owner, type tag or contents
    /// into values: its reference (the digest is `SHA256("Object::" ‖ bytes)` of the bytes as
    /// read) and a copy of the encoding. Lengths are checked like every read; the type tag's
    /// UTF-8 is not (a caller compares the digest with a certified one, which only a canonical
    /// encoding of the certified object matches).
    public mutating func readObjectEncoding() throws(CoreError) -> (reference: ObjectRef, bytes: [UInt8]) {
        let (reference, range) = try readObjectSpan()
        return (reference, Array(UnsafeRawBufferPointer(rebasing: buffer[range])))
    }

    /// ``readObjectEncoding()`` without the copy: the reference, and where the encoding lies in
    /// the buffer being read (byte offsets).
    public mutating func readObjectSpan() throws(CoreError) -> (reference: ObjectRef, range: Range<Int>) {
        let (id, version, range) = try skipObject()
        let digest = Hashing.sha256(domain: .object, raw: UnsafeRawBufferPointer(rebasing: buffer[range]))
        return (ObjectRef(id: id, version: version, digest: digest), range)
    }

    /// Steps over one encoded ``Object`` without hashing or copying it: its id, version, and
    /// where the encoding lies in the buffer being read. Lengths are checked as in
    /// ``readObjectSpan()``; the type tag's UTF-8 is not.
    public mutating func skipObject() throws(CoreError) -> (id: ObjectID, version: UInt64, range: Range<Int>) {
        let start = offset
        let id = try readDigest()
        let version = try readU64()
        switch try readTag(count: 3, type: "Owner") {
        case 0: try skip(32)
        case 1: try skip(8)
        default: break
        }
        try skip(try readLength())  // type tag
        try skip(try readLength())  // contents
        try skip(32)  // previous transaction
        return (id, version, start..<offset)
    }
}
