/*
 * avx512_store.h : the AVX-512 pieces the Linear kernels share (linear_avx512.c,
 * linear_static_avx512.c, linear_amx.c; include only from files built with AVX-512 flags):
 * a mask of the first `count` lanes, loading 16 float32/float16/bfloat16 activations as
 * float32, and storing 16 float32 results as float32, float16 or bfloat16 (round to nearest
 * even, NaN stays NaN, as mq_f32_to_bf16 in convert.h).
 */
#ifndef MQ_AVX512_STORE_H
#define MQ_AVX512_STORE_H

#include <immintrin.h>
#include <stdint.h>

#include "mono_quant.h"

/* Lanes 0..count-1 (none for count <= 0, all 16 for count >= 16). */
static inline __mmask16 mq_mask_first16(int64_t count) {
  if (count >= 16) return (__mmask16)0xffff;
  if (count <= 0) return 0;
  return (__mmask16)((1u << count) - 1u);
}

/* x[i..i+16) of dtype F32, F16 or BF16 as float32; lanes outside `mask` read nothing and are 0. */
static inline __m512 mq_load16_f32(const void *x, mq_dtype dtype, int64_t i, __mmask16 mask) {
  if (dtype == MQ_F32) return _mm512_maskz_loadu_ps(mask, (const float *)x + i);
  const __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)x + i);
  if (dtype == MQ_F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* The lanes of y under `mask` into out[i..] of dtype out_dtype (F32, F16, else BF16). */
static inline void mq_store16(void *out, mq_dtype out_dtype, int64_t i, __m512 y, __mmask16 mask) {
  switch (out_dtype) {
    case MQ_F32: _mm512_mask_storeu_ps((float *)out + i, mask, y); break;
    case MQ_F16:
      _mm256_mask_storeu_epi16((uint16_t *)out + i, mask,
                               _mm512_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    default: { /* bfloat16 */
      const __m512i bits = _mm512_castps_si512(y);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
      __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
      const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff)),
                                                    _mm512_set1_epi32(0x7f800000));
      r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
      _mm256_mask_storeu_epi16((uint16_t *)out + i, mask, _mm512_cvtepi32_epi16(r));
    }
  }
}

#endif /* MQ_AVX512_STORE_H */
