#include "CKHOChecksum.h"

#include <string.h>

// The reflected Castagnoli polynomial.
#define POLY 0x82f63b78u

static uint32_t table[256];

__attribute__((constructor)) static void build_table(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (POLY & (0u - (c & 1)));
    table[i] = c;
  }
}

static uint32_t crc32c_bytes(uint32_t c, const unsigned char *p, size_t n) {
  while (n--) c = table[(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t c, const unsigned char *p,
                                                             size_t n) {
  uint64_t c64 = c;
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c64 = _mm_crc32_u64(c64, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = (uint32_t)c64;
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

#endif

uint32_t ckho_crc32c(uint32_t crc, const void *data, size_t length) {
  uint32_t c = ~crc;
#if defined(__x86_64__)
  if (__builtin_cpu_supports("sse4.2")) return ~crc32c_hw(c, data, length);
#endif
  return ~crc32c_bytes(c, data, length);
}
