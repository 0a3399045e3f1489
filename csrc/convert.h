/*
 * convert.h : float16 / bfloat16 <-> float32 conversions, round to nearest even, matching
 * torch's CPU conversions bit for bit.  Header-only (static inline) so files compiled with
 * different ISA flags can share it.
 */
#ifndef MQ_CONVERT_H
#define MQ_CONVERT_H

#include <stdint.h>
#include <string.h>

#include "mono_quant.h"

static inline float mq_bits_to_f32(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

static inline uint32_t mq_f32_to_bits(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  return bits;
}

static inline float mq_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return mq_bits_to_f32(sign);
    /* subnormal half: renormalise into a normal float */
    uint32_t e = 113; /* 127 - 15 + 1 */
    do {
      e--;
      mant <<= 1;
    } while (!(mant & 0x400u));
    return mq_bits_to_f32(sign | (e << 23) | ((mant & 0x3ffu) << 13));
  }
  if (exp == 31) return mq_bits_to_f32(sign | 0x7f800000u | (mant << 13));
  return mq_bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

static inline uint16_t mq_f32_to_f16(float f) {
  uint32_t x = mq_f32_to_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return (uint16_t)(sign | 0x7e00u); /* NaN stays (quiet) NaN */
  if (x >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to +-Inf */
  if (x < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
    uint32_t e = x >> 23;
    if (e < 102) return sign; /* < 2^-25: rounds to zero */
    uint32_t m = (x & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t q = (x >> 13) - (112u << 10);
  uint32_t rem = x & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++;
  return (uint16_t)(sign | q);
}

static inline float mq_bf16_to_f32(uint16_t b) { return mq_bits_to_f32((uint32_t)b << 16); }

static inline uint16_t mq_f32_to_bf16(float f) {
  uint32_t x = mq_f32_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

/* Element i of a float-like buffer (F32, F16 or BF16) as float32. */
static inline float mq_load_f32(const void *p, mq_dtype dtype, int64_t i) {
  switch (dtype) {
    case MQ_F16: return mq_f16_to_f32(((const uint16_t *)p)[i]);
    case MQ_BF16: return mq_bf16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
  }
}

/* Store v into element i of a float-like buffer, rounding to nearest even. */
static inline void mq_store_f32(void *p, mq_dtype dtype, int64_t i, float v) {
  switch (dtype) {
    case MQ_F16: ((uint16_t *)p)[i] = mq_f32_to_f16(v); break;
    case MQ_BF16: ((uint16_t *)p)[i] = mq_f32_to_bf16(v); break;
    default: ((float *)p)[i] = v; break;
  }
}

/* Convert n contiguous elements to float32 (the hot loops convert a row, then work in f32). */
static inline void mq_row_to_f32(const void *src, mq_dtype dtype, int64_t n, float *dst) {
  if (dtype == MQ_F32) {
    memcpy(dst, src, (size_t)n * sizeof(float));
    return;
  }
  const uint16_t *s = (const uint16_t *)src;
  if (dtype == MQ_F16) {
    for (int64_t i = 0; i < n; i++) dst[i] = mq_f16_to_f32(s[i]);
  } else {
    for (int64_t i = 0; i < n; i++) dst[i] = mq_bf16_to_f32(s[i]);
  }
}

static inline int mq_is_float_dtype(mq_dtype d) { return d == MQ_F32 || d == MQ_F16 || d == MQ_BF16; }

#endif /* MQ_CONVERT_H */
