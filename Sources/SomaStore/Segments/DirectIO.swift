import CMalloc
import Glibc

/// Direct I/O (`O_DIRECT`) for the files the store writes once and reads back in bulk: history
/// segments and a snapshot build's bucket files.
///
/// Why: a buffered write copies every byte into the page cache, and on the virtual machines
/// this node is measured on, pages the guest has not touched recently cost about 2 s of kernel
/// time per GB the first time (`dd` of 1 GB: 2.3 s of system time buffered, 0.1 s direct;
/// BENCHMARKS.md). A direct write goes from an aligned buffer to the device. Where a file
/// system refuses `O_DIRECT` (tmpfs), the same code runs buffered.
enum DirectIO {
    /// Syncs `directory`'s entries (files created or renamed in it) to the disk.
    static func syncDirectory(_ directory: String) throws(StoreError) {
        let fd = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw StoreError(.ioError, "cannot open \(directory): \(String(cString: strerror(errno)))") }
        defer { _ = Glibc.close(fd) }
        guard fsync(fd) == 0 else { throw StoreError(.ioError, "fsync \(directory): \(String(cString: strerror(errno)))") }
    }

    /// The alignment of offsets, lengths and buffers of direct transfers (any logical block
    /// size up to 4 KiB).
    static let alignment = 4_096

    /// Opens `path` with `O_DIRECT` added to `flags`, or returns nil if the file system refuses
    /// direct I/O (the caller then uses its buffered descriptor).
    static func open(_ path: String, _ flags: Int32, _ mode: mode_t = 0o644) -> Int32? {
        let fd = Glibc.open(path, flags | soma_o_direct(), mode)
        return fd >= 0 ? fd : nil
    }

    /// Whether files in `directory` (created if missing) take direct I/O: a probe file opened
    /// with `O_DIRECT` and written one aligned block (a file system may accept the flag and
    /// refuse the write), then removed whatever happened.
    static func supported(in directory: String) -> Bool {
        _ = mkdir(directory, 0o755)  // an existing directory is fine; a missing parent fails the probe
        let probe = directory + "/.direct-io-probe"
        defer { _ = unlink(probe) }
        guard let fd = open(probe, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600) else { return false }
        defer { _ = Glibc.close(fd) }
        var block: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&block, alignment, alignment) == 0, let block else { return false }
        defer { free(block) }
        memset(block, 0, alignment)
        return pwrite(fd, block, alignment, 0) == alignment
    }

    /// `n` rounded down to the alignment.
    static func alignDown(_ n: UInt64) -> UInt64 { n & ~UInt64(alignment - 1) }

    /// `n` rounded up to the alignment (`n` is at most a buffer's capacity).
    static func alignUp(_ n: Int) -> Int { (n + alignment - 1) & ~(alignment - 1) }

    /// Reads `count` bytes at `offset` into `buffer` (as many as the file holds: a short count
    /// means its end), retrying interrupted and partial reads.
    static func read(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64, _ what: @autoclosure () -> String) throws(StoreError) -> Int {
        var done = 0
        while done < count {
            let n = pread(fd, buffer + done, count - done, off_t(offset + UInt64(done)))
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw StoreError(.ioError, "read \(what()): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Writes `count` bytes at `offset`, retrying interrupted and partial writes.
    static func write(_ fd: Int32, _ buffer: UnsafeRawPointer, count: Int, at offset: UInt64, _ what: @autoclosure () -> String) throws(StoreError) {
        var done = 0
        while done < count {
            let n = pwrite(fd, buffer + done, count - done, off_t(offset + UInt64(done)))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw StoreError(.ioError, "write \(what()): \(String(cString: strerror(errno)))") }
            done += n
        }
    }
}

/// Memory aligned for direct I/O, freed with the object.
final class AlignedBuffer: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    /// A multiple of ``DirectIO/alignment``.
    let capacity: Int

    /// At least `capacity` bytes (rounded up to the alignment).
    init(capacity: Int) {
        let size = DirectIO.alignUp(max(capacity, DirectIO.alignment))
        var p: UnsafeMutableRawPointer?
        guard posix_memalign(&p, DirectIO.alignment, size) == 0, let p else {
            fatalError("out of memory: \(size) bytes aligned for direct I/O")
        }
        pointer = p
        self.capacity = size
    }

    deinit { free(pointer) }
}

/// Appends to one file through a staging buffer: whole buffers are written as they fill, and
/// ``flush()`` writes what is staged, its last block padded to the alignment, then cuts the
/// file back to its length, keeping that partial block staged to be written again with what
/// follows. Direct when the descriptor was opened with `O_DIRECT`; the same writes are valid
/// buffered. The buffer is the caller's (a writer reuses one, so appends touch no new memory).
struct DirectAppender {
    let fd: Int32
    let path: String
    let buffer: AlignedBuffer
    /// The file offset of the buffer's first byte (aligned).
    private(set) var base: UInt64
    /// The bytes staged in the buffer.
    private(set) var fill: Int

    /// The file's length with everything appended so far.
    var size: UInt64 { base + UInt64(fill) }

    /// An appender at the end of a file of `size` bytes; the partial last block is read back
    /// through `readFD` (a descriptor of the same file).
    init(fd: Int32, readFD: Int32, path: String, buffer: AlignedBuffer, size: UInt64) throws(StoreError) {
        self.fd = fd
        self.path = path
        self.buffer = buffer
        base = DirectIO.alignDown(size)
        fill = Int(size - base)
        if fill > 0 {
            let n = try DirectIO.read(readFD, buffer.pointer, count: fill, at: base, path)
            guard n == fill else { throw StoreError(.ioError, "read \(path): the file ends early") }
        }
    }

    /// Stages `bytes`, writing each buffer that fills.
    mutating func append(_ bytes: UnsafeRawBufferPointer) throws(StoreError) {
        var at = 0
        while at < bytes.count {
            let n = min(bytes.count - at, buffer.capacity - fill)
            (buffer.pointer + fill).copyMemory(from: bytes.baseAddress! + at, byteCount: n)
            fill += n
            at += n
            if fill == buffer.capacity {
                try DirectIO.write(fd, buffer.pointer, count: fill, at: base, path)
                base += UInt64(fill)
                fill = 0
            }
        }
    }

    /// Writes what is staged (padded to the alignment), cuts the file to ``size``, and keeps
    /// the partial last block staged.
    mutating func flush() throws(StoreError) {
        guard fill > 0 else { return }
        let padded = DirectIO.alignUp(fill)
        (buffer.pointer + fill).initializeMemory(as: UInt8.self, repeating: 0, count: padded - fill)
        try DirectIO.write(fd, buffer.pointer, count: padded, at: base, path)
        if padded != fill {
            guard ftruncate(fd, off_t(size)) == 0 else {
                throw StoreError(.ioError, "cannot cut \(path) to \(size) bytes: \(String(cString: strerror(errno)))")
            }
        }
        let whole = Int(DirectIO.alignDown(UInt64(fill)))
        if whole > 0 {
            buffer.pointer.copyMemory(from: buffer.pointer + whole, byteCount: fill - whole)
            base += UInt64(whole)
            fill -= whole
        }
    }
}
