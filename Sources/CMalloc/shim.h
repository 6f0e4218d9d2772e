// glibc's malloc tuning (mallopt), from libc6-dev. Only SomaStore imports it.
#ifndef SOMA_CMALLOC_SHIM_H
#define SOMA_CMALLOC_SHIM_H
#include <malloc.h>
#endif
