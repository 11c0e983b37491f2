#ifndef SWIFT_KHO_CKHOCHECKSUM_H
#define SWIFT_KHO_CKHOCHECKSUM_H

#include <stddef.h>
#include <stdint.h>

/// CRC-32C (Castagnoli) of `length` bytes at `data`, continuing `crc` (0 to
/// start): the SSE4.2 `crc32` instruction where the CPU has it, else a
/// byte-wise table.
/// Same result everywhere: ckho_crc32c(0, "123456789", 9) == 0xe3069283.
uint32_t ckho_crc32c(uint32_t crc, const void *data, size_t length);

#endif
