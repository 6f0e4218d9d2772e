// LZ4's frame API from Debian's liblz4-dev. Only SomaStore imports it.
#ifndef SOMA_CLZ4_SHIM_H
#define SOMA_CLZ4_SHIM_H
#include <lz4frame.h>
#endif
