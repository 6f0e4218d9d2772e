// RocksDB's C API from Debian's librocksdb-dev. Only SomaStore imports it.
#ifndef SOMA_CROCKSDB_SHIM_H
#define SOMA_CROCKSDB_SHIM_H
#include <rocksdb/c.h>
#endif
