/*
 * crc32c_int.h — CRC32C (Castagnoli, the iSCSI/ext4/Kafka checksum) for the checkpoint's
 * record checksums. Debian has no C library that provides CRC32C (zlib's crc32 is the
 * IEEE polynomial, without hardware support), so it is written here: the SSE4.2 crc32
 * instruction where the CPU has it (chosen once at run time), else a table-driven
 * slicing-by-8 loop. Both give the same values (RFC 3720 test vectors in the tests).
 */
#ifndef LK_CRC32C_INT_H
#define LK_CRC32C_INT_H

#include <stddef.h>
#include <stdint.h>

/**
 * Extend crc (0 to start) with n bytes at p and return the new CRC32C. Chaining calls
 * over consecutive pieces gives the CRC of their concatenation. Thread-safe.
 */
uint32_t lk__crc32c(uint32_t crc, const void *p, size_t n);

#endif
