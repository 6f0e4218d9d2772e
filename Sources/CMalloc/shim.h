// glibc's malloc tuning (mallopt) and the O_DIRECT flag (a GNU extension, which Swift's Glibc
// module leaves out), from libc6-dev. Only SomaStore imports it.
#ifndef SOMA_CMALLOC_SHIM_H
#define SOMA_CMALLOC_SHIM_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <malloc.h>

/// open(2)'s O_DIRECT, whose value differs between architectures.
static inline int soma_o_direct(void) { return O_DIRECT; }
#endif
