// jemalloc (libjemalloc-dev), linked into the soma-node and soma-bench executables: Debian's
// build exports malloc/free unprefixed, so once linked it serves every allocation of the
// process (Swift runtime, RocksDB, liblz4, BoringSSL included). ARCHITECTURE.md, "Memory".
#ifndef SOMA_CJEMALLOC_SHIM_H
#define SOMA_CJEMALLOC_SHIM_H
#include <stdint.h>
#include <stdlib.h>
#include <jemalloc/jemalloc.h>

/// Whether jemalloc serves this process's malloc: its count of bytes this thread allocated
/// grows with a malloc (0 when glibc serves it, or jemalloc is not linked).
static inline int soma_jemalloc_serves_malloc(void) {
    uint64_t before = 0, after = 0;
    size_t n = sizeof(uint64_t);
    if (mallctl("thread.allocated", &before, &n, NULL, 0) != 0) return 0;
    void *volatile p = malloc(4096);
    n = sizeof(uint64_t);
    int ok = mallctl("thread.allocated", &after, &n, NULL, 0) == 0 && after >= before + 4096;
    free(p);
    return ok;
}
#endif
