import CMalloc

/// Process-wide memory settings for long-running stores.
public enum MemoryTuning {
    /// Caps glibc's malloc arenas. With its default of one arena per thread (up to 8 × cores),
    /// memory freed by the store's pool threads stays mapped, and the resident set of a long
    /// ingest grew past 1 GiB where 2 arenas keep it near 550 MiB (BENCHMARKS.md). Call first
    /// thing in `main`; returns whether glibc accepted it.
    @discardableResult
    public static func limitMallocArenas(_ arenas: Int32 = 2) -> Bool {
        mallopt(M_ARENA_MAX, arenas) == 1
    }
}
