/*
 * linear_avx2.c : the quantized Linear forward with AVX2 + FMA + F16C, compiled with -mavx2
 * -mfma -mf16c and run only when cpu.c says the CPU and OS can.
 *
 * A 64-byte chunk of a tile (four k of 16 rows, linear.h) is two ymm registers: rows 0-7 and
 * rows 8-15.  vpmaddubsw multiplies unsigned by signed bytes and adds pairs into int16 with
 * saturation, so:
 *   INT8: weights are made signed again (w = wu ^ 0x80) and multiplied as |w| * (x * sign(w))
 *         (at most 2 * 128 * 127 = 32512 per pair: no saturation), then vpmaddwd sums pairs;
 *   INT4: nibbles (0..15) times int8 activations, 2 * 15 * 127 per pair, so a whole block of
 *         32 k (8 products per lane) fits int16 before one vpmaddwd.
 * The integer sums are the same as the portable path's; see linear.h for the formulas.
 */
#include <immintrin.h>

#include "avx2_load.h"
#include "linear.h"

#define MR 2 /* batch rows per pass over a tile (16 ymm registers) */

/* ---- activations -------------------------------------------------------------------------- */

static inline uint32_t hmax_epu32(__m256i v) {
  __m128i m = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(1, 0, 3, 2)));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(2, 3, 0, 1)));
  return (uint32_t)_mm_cvtsi128_si32(m);
}

static inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

static int quantize_row_avx2(const void *x, mq_dtype dtype, int64_t k, int64_t kp, int8_t *xq,
                             float *d, int32_t *asum) {
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
  const __m256i qlo = _mm256_set1_epi32(-127), qhi = _mm256_set1_epi32(127);
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const size_t esize = mq_dtype_size(dtype);
  for (int64_t b = 0; b < kp / MQ_LINEAR_QK; b++) {
    const int64_t i0 = b * MQ_LINEAR_QK;
    const void *src = (const char *)x + (size_t)i0 * esize;
    _Alignas(32) unsigned char tail[MQ_LINEAR_QK * 4];
    if (k - i0 < MQ_LINEAR_QK) { /* the last, partial block: zero-padded copy */
      memset(tail, 0, sizeof tail);
      memcpy(tail, src, (size_t)(k - i0) * esize);
      src = tail;
    }
    __m256 v[4];
    __m256i bits = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
      v[j] = mq_load8_f32(src, dtype, 8 * j);
      bits = _mm256_max_epu32(bits, _mm256_and_si256(_mm256_castps_si256(v[j]), abs_mask));
    }
    const uint32_t amax_bits = hmax_epu32(bits);
    if (amax_bits >= 0x7f800000u) return 0;
    const float db = mq_bits_to_f32(amax_bits) / 127.0f;
    __m256i q[4];
    for (int j = 0; j < 4; j++) q[j] = _mm256_setzero_si256();
    if (db > 0.0f) {
      const __m256 vd = _mm256_set1_ps(db);
      for (int j = 0; j < 4; j++) { /* MXCSR default: round to nearest even */
        q[j] = _mm256_cvtps_epi32(_mm256_div_ps(v[j], vd));
        q[j] = _mm256_min_epi32(_mm256_max_epi32(q[j], qlo), qhi);
      }
    }
    const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    const __m256i p01 = _mm256_packs_epi32(q[0], q[1]), p23 = _mm256_packs_epi32(q[2], q[3]);
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), perm);
    _mm256_storeu_si256((__m256i *)(xq + i0), bytes);
    d[b] = db;
    asum[b] = hsum_epi32(sum);
  }
  return 1;
}

/* ---- output ------------------------------------------------------------------------------- */

static inline void store_rows(const mq_linear_job *job, int64_t m, int64_t n0, __m256 y0, __m256 y1,
                              int64_t rows) {
  const int64_t i = m * job->n + n0;
  if (rows == MQ_LINEAR_NR && job->out_dtype == MQ_F32) {
    _mm256_storeu_ps((float *)job->out + i, y0);
    _mm256_storeu_ps((float *)job->out + i + 8, y1);
  } else if (rows == MQ_LINEAR_NR && job->out_dtype == MQ_F16) {
    _mm_storeu_si128((__m128i *)((uint16_t *)job->out + i), _mm256_cvtps_ph(y0, _MM_FROUND_TO_NEAREST_INT));
    _mm_storeu_si128((__m128i *)((uint16_t *)job->out + i + 8), _mm256_cvtps_ph(y1, _MM_FROUND_TO_NEAREST_INT));
  } else {
    float y[MQ_LINEAR_NR];
    _mm256_storeu_ps(y, y0);
    _mm256_storeu_ps(y + 8, y1);
    mq_linear_store_rows(job, m, n0, y, rows);
  }
}

static inline __m256i bcast4(const int8_t *p) {
  int32_t v;
  memcpy(&v, p, sizeof v);
  return _mm256_set1_epi32(v);
}

static inline void load_bias(const mq_linear_job *job, int64_t n0, int64_t rows, __m256 *b0, __m256 *b1) {
  float b[MQ_LINEAR_NR] = {0};
  if (job->bias) memcpy(b, job->bias + n0, (size_t)rows * sizeof(float));
  *b0 = _mm256_loadu_ps(b);
  *b1 = _mm256_loadu_ps(b + 8);
}

/* ---- INT8 --------------------------------------------------------------------------------- */

static inline __attribute__((always_inline)) void int8_pass(const mq_linear_job *job, const uint8_t *tile,
                                                            int64_t t, int64_t m0, const int mr) {
  const int64_t nb = job->nb, kp = job->kp;
  const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
  __m256 f0[MR], f1[MR];
  for (int i = 0; i < mr; i++) f0[i] = f1[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t *w = tile + b * MQ_LINEAR_INT8_BLOCK_BYTES;
    __m256i a0[MR], a1[MR];
    for (int i = 0; i < mr; i++) a0[i] = a1[i] = _mm256_setzero_si256();
    for (int c = 0; c < 8; c++) {
      const __m256i w0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(w + c * 64)), flip);
      const __m256i w1 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(w + c * 64 + 32)), flip);
      const __m256i u0 = _mm256_abs_epi8(w0), u1 = _mm256_abs_epi8(w1);
      for (int i = 0; i < mr; i++) {
        const __m256i x = bcast4(job->xq + (m0 + i) * kp + b * MQ_LINEAR_QK + c * 4);
        a0[i] = _mm256_add_epi32(a0[i], _mm256_madd_epi16(_mm256_maddubs_epi16(u0, _mm256_sign_epi8(x, w0)), ones));
        a1[i] = _mm256_add_epi32(a1[i], _mm256_madd_epi16(_mm256_maddubs_epi16(u1, _mm256_sign_epi8(x, w1)), ones));
      }
    }
    for (int i = 0; i < mr; i++) {
      const __m256 db = _mm256_set1_ps(job->d[(m0 + i) * nb + b]);
      f0[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0[i]), db, f0[i]);
      f1[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1[i]), db, f1[i]);
    }
  }
  const uint8_t *tail = tile + nb * MQ_LINEAR_INT8_BLOCK_BYTES; /* mq_linear_int8_tile_tail */
  const __m256 s0 = _mm256_loadu_ps((const float *)(const void *)tail);
  const __m256 s1 = _mm256_loadu_ps((const float *)(const void *)(tail + 32));
  const __m256 z0 = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(tail + 64)));
  const __m256 z1 = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(tail + 96)));
  const int64_t n0 = t * MQ_LINEAR_NR, rows = mq_linear_tile_rows(job, t);
  __m256 b0, b1;
  load_bias(job, n0, rows, &b0, &b1);
  for (int i = 0; i < mr; i++) {
    const __m256 S = _mm256_set1_ps(job->corr[m0 + i]);
    const __m256 y0 = _mm256_fmadd_ps(s0, _mm256_fnmadd_ps(z0, S, f0[i]), b0);
    const __m256 y1 = _mm256_fmadd_ps(s1, _mm256_fnmadd_ps(z1, S, f1[i]), b1);
    store_rows(job, m0 + i, n0, y0, y1, rows);
  }
}

static void int8_tiles_avx2(const mq_linear_job *job, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; t++) {
    const uint8_t *tile = job->tiles + t * job->tile_bytes;
    int64_t m0 = 0;
    for (; m0 + MR <= job->m; m0 += MR) int8_pass(job, tile, t, m0, MR);
    if (m0 < job->m) int8_pass(job, tile, t, m0, 1);
  }
}

/* ---- INT4 --------------------------------------------------------------------------------- */

static inline __attribute__((always_inline)) void int4_pass(const mq_linear_job *job, const uint8_t *tile,
                                                            int64_t t, int64_t m0, const int mr) {
  const int64_t nb = job->nb, kp = job->kp, bpg = job->group / MQ_LINEAR_QK;
  const __m256i low4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  __m256 f0[MR], f1[MR];
  for (int i = 0; i < mr; i++) f0[i] = f1[i] = _mm256_setzero_ps();
  const uint8_t *p = tile;
  for (int64_t grp = 0; grp < job->ng; grp++) {
    const __m256 s0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    const __m256 s1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));
    const __m256 z0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 32))));
    const __m256 z1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p + 40))));
    p += MQ_LINEAR_INT4_GROUP_HEADER;
    __m256 g0[MR], g1[MR];
    for (int i = 0; i < mr; i++) g0[i] = g1[i] = _mm256_setzero_ps();
    for (int64_t bb = 0; bb < bpg; bb++, p += MQ_LINEAR_INT4_BLOCK_BYTES) {
      const int64_t b = grp * bpg + bb;
      __m256i h0[MR], h1[MR]; /* int16 pair sums, |.| <= 8 * 15 * 127 */
      for (int i = 0; i < mr; i++) h0[i] = h1[i] = _mm256_setzero_si256();
      for (int c = 0; c < 4; c++) {
        const __m256i r0 = _mm256_loadu_si256((const __m256i *)(p + c * 64));
        const __m256i r1 = _mm256_loadu_si256((const __m256i *)(p + c * 64 + 32));
        const __m256i lo0 = _mm256_and_si256(r0, low4), hi0 = _mm256_and_si256(_mm256_srli_epi16(r0, 4), low4);
        const __m256i lo1 = _mm256_and_si256(r1, low4), hi1 = _mm256_and_si256(_mm256_srli_epi16(r1, 4), low4);
        for (int i = 0; i < mr; i++) {
          const int8_t *a = job->xq + (m0 + i) * kp + b * MQ_LINEAR_QK + c * 4;
          const __m256i xl = bcast4(a), xh = bcast4(a + 16);
          h0[i] = _mm256_add_epi16(h0[i], _mm256_add_epi16(_mm256_maddubs_epi16(lo0, xl), _mm256_maddubs_epi16(hi0, xh)));
          h1[i] = _mm256_add_epi16(h1[i], _mm256_add_epi16(_mm256_maddubs_epi16(lo1, xl), _mm256_maddubs_epi16(hi1, xh)));
        }
      }
      for (int i = 0; i < mr; i++) {
        const __m256 db = _mm256_set1_ps(job->d[(m0 + i) * nb + b]);
        g0[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(h0[i], ones)), db, g0[i]);
        g1[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(h1[i], ones)), db, g1[i]);
      }
    }
    for (int i = 0; i < mr; i++) {
      const __m256 D = _mm256_set1_ps(job->corr[(m0 + i) * job->ng + grp]);
      f0[i] = _mm256_fmadd_ps(s0, _mm256_fnmadd_ps(z0, D, g0[i]), f0[i]);
      f1[i] = _mm256_fmadd_ps(s1, _mm256_fnmadd_ps(z1, D, g1[i]), f1[i]);
    }
  }
  const int64_t n0 = t * MQ_LINEAR_NR, rows = mq_linear_tile_rows(job, t);
  __m256 b0, b1;
  load_bias(job, n0, rows, &b0, &b1);
  for (int i = 0; i < mr; i++)
    store_rows(job, m0 + i, n0, _mm256_add_ps(f0[i], b0), _mm256_add_ps(f1[i], b1), rows);
}

static void int4_tiles_avx2(const mq_linear_job *job, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; t++) {
    const uint8_t *tile = job->tiles + t * job->tile_bytes;
    int64_t m0 = 0;
    for (; m0 + MR <= job->m; m0 += MR) int4_pass(job, tile, t, m0, MR);
    if (m0 < job->m) int4_pass(job, tile, t, m0, 1);
  }
}

/* Static INT8: bytes widened to int16 and multiplied pairwise into int32 (vpmaddwd); maddubs
 * would saturate (2 * 255 * 127 > 32767), so it is not used here. */
static int64_t dot_u8s8_avx2(const uint8_t *xu, const int8_t *ws, int64_t len) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= len; i += 32) {
    const __m256i x0 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(xu + i)));
    const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(ws + i)));
    const __m256i x1 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(xu + i + 16)));
    const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(ws + i + 16)));
    acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(x0, w0));
    acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(x1, w1));
  }
  const __m256i acc = _mm256_add_epi32(acc0, acc1);
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  int32_t total = _mm_cvtsi128_si32(s); /* exact: len <= MQ_LINEAR_STATIC_BLOCK */
  for (; i < len; i++) total += (int32_t)xu[i] * (int32_t)ws[i];
  return total;
}

const mq_linear_kernels mq_linear_kernels_avx2 = {"avx2", quantize_row_avx2, int8_tiles_avx2,
                                                  int4_tiles_avx2, dot_u8s8_avx2,
                                                  NULL, NULL, 0, 0, NULL}; /* no batch kernels */
