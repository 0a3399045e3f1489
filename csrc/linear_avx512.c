/*
 * linear_avx512.c : the quantized Linear forward with AVX-512 and VNNI (vpdpbusd), compiled
 * with -mavx512f/bw/vl/dq -mavx512vnni and run only when cpu.c says the CPU and OS can.
 *
 * One zmm register holds four consecutive k of the 16 rows of a tile (linear.h), so one
 * vpdpbusd multiplies 64 weight bytes by four activation bytes broadcast to every lane and
 * adds into 16 per-row int32 sums.  vpdpbusd takes unsigned x signed bytes: the weights are
 * the unsigned side (INT8 stored as w + 128, INT4 nibbles 0..15), the int8 activations the
 * signed side; for INT8 the +128 is taken back exactly by starting each block's sum at
 * -128 * asum[b].  Up to MR batch rows share each weight load.
 */
#include <immintrin.h>

#include "linear.h"

#define MR 4 /* batch rows per pass over a tile */

/* ---- activations -------------------------------------------------------------------------- */

static inline __m512 load16_f32(const void *x, mq_dtype dtype, int64_t i, __mmask16 mask) {
  if (dtype == MQ_F32) return _mm512_maskz_loadu_ps(mask, (const float *)x + i);
  const __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)x + i);
  if (dtype == MQ_F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline __mmask16 mask_first(int64_t count) {
  if (count >= 16) return (__mmask16)0xffff;
  if (count <= 0) return 0;
  return (__mmask16)((1u << count) - 1u);
}

static int quantize_row_avx512(const void *x, mq_dtype dtype, int64_t k, int64_t kp, int8_t *xq,
                               float *d, int32_t *asum) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i qlo = _mm512_set1_epi32(-127), qhi = _mm512_set1_epi32(127);
  for (int64_t b = 0; b < kp / MQ_LINEAR_QK; b++) {
    const int64_t i0 = b * MQ_LINEAR_QK;
    const __m512 v0 = load16_f32(x, dtype, i0, mask_first(k - i0));
    const __m512 v1 = load16_f32(x, dtype, i0 + 16, mask_first(k - i0 - 16));
    const __m512i bits = _mm512_max_epu32(_mm512_and_si512(_mm512_castps_si512(v0), abs_mask),
                                          _mm512_and_si512(_mm512_castps_si512(v1), abs_mask));
    const uint32_t amax_bits = _mm512_reduce_max_epu32(bits);
    if (amax_bits >= 0x7f800000u) return 0;
    const float db = mq_bits_to_f32(amax_bits) / 127.0f;
    __m512i q0 = _mm512_setzero_si512(), q1 = _mm512_setzero_si512();
    if (db > 0.0f) {
      const __m512 vd = _mm512_set1_ps(db);
      /* default MXCSR rounding: to nearest even, as nearbyintf in the portable path */
      q0 = _mm512_cvtps_epi32(_mm512_div_ps(v0, vd));
      q1 = _mm512_cvtps_epi32(_mm512_div_ps(v1, vd));
      q0 = _mm512_min_epi32(_mm512_max_epi32(q0, qlo), qhi);
      q1 = _mm512_min_epi32(_mm512_max_epi32(q1, qlo), qhi);
    }
    _mm_storeu_si128((__m128i *)(xq + i0), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128((__m128i *)(xq + i0 + 16), _mm512_cvtepi32_epi8(q1));
    d[b] = db;
    asum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
  }
  return 1;
}

/* ---- output ------------------------------------------------------------------------------- */

static inline void store_rows(const mq_linear_job *job, int64_t m, int64_t n0, __m512 y, int64_t rows) {
  const __mmask16 mask = mask_first(rows);
  const int64_t i = m * job->n + n0;
  switch (job->out_dtype) {
    case MQ_F32: _mm512_mask_storeu_ps((float *)job->out + i, mask, y); break;
    case MQ_F16:
      _mm256_mask_storeu_epi16((uint16_t *)job->out + i, mask,
                               _mm512_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    default: { /* bfloat16, round to nearest even; NaN stays NaN (as mq_f32_to_bf16) */
      const __m512i bits = _mm512_castps_si512(y);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
      __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
      const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff)),
                                                    _mm512_set1_epi32(0x7f800000));
      r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
      _mm256_mask_storeu_epi16((uint16_t *)job->out + i, mask, _mm512_cvtepi32_epi16(r));
    }
  }
}

static inline __m512i bcast4(const int8_t *p) {
  int32_t v;
  memcpy(&v, p, sizeof v);
  return _mm512_set1_epi32(v);
}

/* ---- INT8 --------------------------------------------------------------------------------- */

static inline __attribute__((always_inline)) void int8_pass(const mq_linear_job *job, const uint8_t *tile,
                                                            int64_t t, int64_t m0, const int mr) {
  const int64_t nb = job->nb, kp = job->kp;
  __m512 facc[MR];
  for (int i = 0; i < mr; i++) facc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t *w = tile + b * MQ_LINEAR_INT8_BLOCK_BYTES;
    __m512i acc[MR], acc2[MR];
    for (int i = 0; i < mr; i++) {
      acc[i] = _mm512_set1_epi32(-128 * job->asum[(m0 + i) * nb + b]);
      acc2[i] = _mm512_setzero_si512();
    }
    for (int c = 0; c < 8; c += 2) {
      const __m512i w0 = _mm512_loadu_si512(w + c * 64);
      const __m512i w1 = _mm512_loadu_si512(w + c * 64 + 64);
      for (int i = 0; i < mr; i++) {
        const int8_t *a = job->xq + (m0 + i) * kp + b * MQ_LINEAR_QK + c * 4;
        acc[i] = _mm512_dpbusd_epi32(acc[i], w0, bcast4(a));
        acc2[i] = _mm512_dpbusd_epi32(acc2[i], w1, bcast4(a + 4));
      }
    }
    for (int i = 0; i < mr; i++)
      facc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc[i], acc2[i])),
                                _mm512_set1_ps(job->d[(m0 + i) * nb + b]), facc[i]);
  }
  const uint8_t *tail = tile + nb * MQ_LINEAR_INT8_BLOCK_BYTES; /* mq_linear_int8_tile_tail */
  const __m512 scale = _mm512_loadu_ps(tail);
  const __m512 zero = _mm512_cvtepi32_ps(_mm512_loadu_si512(tail + 64));
  const int64_t n0 = t * MQ_LINEAR_NR, rows = mq_linear_tile_rows(job, t);
  const __m512 bias = job->bias ? _mm512_maskz_loadu_ps(mask_first(rows), job->bias + n0) : _mm512_setzero_ps();
  for (int i = 0; i < mr; i++) {
    const __m512 diff = _mm512_fnmadd_ps(zero, _mm512_set1_ps(job->corr[m0 + i]), facc[i]);
    store_rows(job, m0 + i, n0, _mm512_fmadd_ps(scale, diff, bias), rows);
  }
}

static void int8_tiles_avx512(const mq_linear_job *job, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; t++) {
    const uint8_t *tile = job->tiles + t * job->tile_bytes;
    int64_t m0 = 0;
    for (; m0 + MR <= job->m; m0 += MR) int8_pass(job, tile, t, m0, MR);
    switch (job->m - m0) {
      case 3: int8_pass(job, tile, t, m0, 3); break;
      case 2: int8_pass(job, tile, t, m0, 2); break;
      case 1: int8_pass(job, tile, t, m0, 1); break;
      default: break;
    }
  }
}

/* ---- INT4 --------------------------------------------------------------------------------- */

static inline __attribute__((always_inline)) void int4_pass(const mq_linear_job *job, const uint8_t *tile,
                                                            int64_t t, int64_t m0, const int mr) {
  const int64_t nb = job->nb, kp = job->kp, bpg = job->group / MQ_LINEAR_QK;
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  __m512 facc[MR];
  for (int i = 0; i < mr; i++) facc[i] = _mm512_setzero_ps();
  const uint8_t *p = tile;
  for (int64_t grp = 0; grp < job->ng; grp++) {
    const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    const __m512 zero = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 32))));
    p += MQ_LINEAR_INT4_GROUP_HEADER;
    __m512 gacc[MR];
    for (int i = 0; i < mr; i++) gacc[i] = _mm512_setzero_ps();
    for (int64_t bb = 0; bb < bpg; bb++, p += MQ_LINEAR_INT4_BLOCK_BYTES) {
      const int64_t b = grp * bpg + bb;
      __m512i acc[MR], acc2[MR];
      for (int i = 0; i < mr; i++) acc[i] = acc2[i] = _mm512_setzero_si512();
      for (int c = 0; c < 4; c++) {
        const __m512i raw = _mm512_loadu_si512(p + c * 64);
        const __m512i lo = _mm512_and_si512(raw, low4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
        for (int i = 0; i < mr; i++) {
          const int8_t *a = job->xq + (m0 + i) * kp + b * MQ_LINEAR_QK + c * 4;
          acc[i] = _mm512_dpbusd_epi32(acc[i], lo, bcast4(a));
          acc2[i] = _mm512_dpbusd_epi32(acc2[i], hi, bcast4(a + 16));
        }
      }
      for (int i = 0; i < mr; i++)
        gacc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc[i], acc2[i])),
                                  _mm512_set1_ps(job->d[(m0 + i) * nb + b]), gacc[i]);
    }
    for (int i = 0; i < mr; i++) {
      const __m512 diff = _mm512_fnmadd_ps(zero, _mm512_set1_ps(job->corr[(m0 + i) * job->ng + grp]), gacc[i]);
      facc[i] = _mm512_fmadd_ps(scale, diff, facc[i]);
    }
  }
  const int64_t n0 = t * MQ_LINEAR_NR, rows = mq_linear_tile_rows(job, t);
  const __m512 bias = job->bias ? _mm512_maskz_loadu_ps(mask_first(rows), job->bias + n0) : _mm512_setzero_ps();
  for (int i = 0; i < mr; i++) store_rows(job, m0 + i, n0, _mm512_add_ps(facc[i], bias), rows);
}

static void int4_tiles_avx512(const mq_linear_job *job, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; t++) {
    const uint8_t *tile = job->tiles + t * job->tile_bytes;
    int64_t m0 = 0;
    for (; m0 + MR <= job->m; m0 += MR) int4_pass(job, tile, t, m0, MR);
    switch (job->m - m0) {
      case 3: int4_pass(job, tile, t, m0, 3); break;
      case 2: int4_pass(job, tile, t, m0, 2); break;
      case 1: int4_pass(job, tile, t, m0, 1); break;
      default: break;
    }
  }
}

const mq_linear_kernels mq_linear_kernels_avx512_vnni = {
    "avx512_vnni", quantize_row_avx512, int8_tiles_avx512, int4_tiles_avx512};
