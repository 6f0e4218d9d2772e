import Foundation

/// Why `path` could not be read (or, with `writing`, created or written), in the file system's
/// words: "no such file", "it is a directory", "Permission denied", "No space left on device"…
/// For error messages after a Foundation call that reports only failure.
public func fileProblem(_ path: String, writing: Bool = false) -> String {
    var isDirectory: ObjCBool = false
    let exists = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
    if exists && isDirectory.boolValue { return "it is a directory" }
    if !writing && !exists {
        let parent = (path as NSString).deletingLastPathComponent
        return parent.isEmpty || FileManager.default.fileExists(atPath: parent) ? "no such file" : "no such file (nor directory \(parent))"
    }
    // Try the same access with POSIX to learn its errno.
    let fd = writing ? open(path, O_WRONLY | O_CREAT | O_APPEND, 0o600) : open(path, O_RDONLY)
    guard fd >= 0 else { return String(cString: strerror(errno)) }
    close(fd)
    return writing ? "the write failed (is the disk full?)" : "the read failed"
}
