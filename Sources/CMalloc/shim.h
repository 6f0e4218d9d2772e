// glibc's malloc tuning (mallopt), the O_DIRECT flag and thread names (GNU extensions, which
// Swift's Glibc module leaves out), from libc6-dev. Only SomaStore imports it.
#ifndef SOMA_CMALLOC_SHIM_H
#define SOMA_CMALLOC_SHIM_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>

/// open(2)'s O_DIRECT, whose value differs between architectures.
static inline int soma_o_direct(void) { return O_DIRECT; }

/// Names the calling thread (at most 15 bytes) for `top -H` and profilers: pthread_setname_np
/// is a GNU extension too.
static inline int soma_name_thread(const char *name) { return pthread_setname_np(pthread_self(), name); }
#endif
