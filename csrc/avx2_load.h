/*
 * avx2_load.h : loading 8 float32/float16/bfloat16 activations as float32, shared by the AVX2
 * Linear kernels (linear_avx2.c, linear_static_avx2.c; include only from files built with
 * -mavx2 -mf16c).
 */
#ifndef MQ_AVX2_LOAD_H
#define MQ_AVX2_LOAD_H

#include <immintrin.h>
#include <stdint.h>

#include "mono_quant.h"

/* x[i..i+8) of dtype F32, F16 or BF16 as float32 (all eight must be readable). */
static inline __m256 mq_load8_f32(const void *x, mq_dtype dtype, int64_t i) {
  if (dtype == MQ_F32) return _mm256_loadu_ps((const float *)x + i);
  const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)x + i));
  if (dtype == MQ_F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

#endif /* MQ_AVX2_LOAD_H */
