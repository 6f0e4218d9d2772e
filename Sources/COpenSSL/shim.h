// SHA-256 from the system's libcrypto (Debian's libssl-dev): the low-level context API,
// which hashes on the stack with SHA-NI and no allocation. Only SomaCore's Hashing uses it.
#ifndef SOMA_COPENSSL_SHIM_H
#define SOMA_COPENSSL_SHIM_H
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <openssl/sha.h>
#endif
