/*
 * linear_static_avx2.c : the packed static-INT8 Linear with AVX2, compiled with the flags of
 * linear_avx2.c and run when cpu.c picked that path.
 *
 * vpmaddubsw (linear_avx2.c's INT8 trick) cannot take these operands: static activations
 * reach -128 and the weights 255 (unsigned), so its int16 pair sums would saturate.  Both
 * are widened to int16 instead and vpmaddwd multiplies them exactly: the activations once,
 * when they are quantized (this table's xs_size is 2), the weights as they are loaded
 * (vpmovzxbw).  One 64-byte chunk of a tile (four k of 16 rows, linear.h) is four ymm of
 * int16, each holding rows 4h..4h+3, and vpmaddwd against the four activations (one
 * broadcast load) leaves two partial sums per row (k 0-1 and k 2-3), added pairwise once in
 * the epilogue.  The sums
 * and the epilogue are those of linear_static.h, as the portable path's.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "avx2_load.h"
#include "linear_static.h"

#define MR 2 /* batch rows per pass over a tile: 8 sums, 2 activations, 1 weight, 1 product */

/* ---- input quantization ------------------------------------------------------------------- */

static inline int64_t hsum_epi32(__m256i v) {
  int32_t s[8];
  _mm256_storeu_si256((__m256i *)s, v);
  int64_t t = 0;
  for (int i = 0; i < 8; i++) t += s[i];
  return t;
}

/* Writes int16 activations (xs_size 2): the tile loop broadcasts four of them with one load. */
static int quantize_row_avx2(const void *x, mq_dtype dtype, int64_t k, int64_t kp, float scale,
                             int32_t zs, void *xs_out, int64_t *sum) {
  int16_t *xs = xs_out;
  const __m256 vs = _mm256_set1_ps(scale), vzs = _mm256_set1_ps((float)zs);
  const __m256 tlo = _mm256_set1_ps(-1024.0f), thi = _mm256_set1_ps(1024.0f);
  const __m256 qlo = _mm256_set1_ps(-128.0f), qhi = _mm256_set1_ps(127.0f);
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf_bits = _mm256_set1_epi32(0x7f800000);
  __m256i vsum = _mm256_setzero_si256(), bad = _mm256_setzero_si256();
  int64_t total = 0, i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256 v = mq_load8_f32(x, dtype, i);
    /* |v| >= inf as integers (signed compare is right: both sides are below 2^31) */
    bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(_mm256_and_si256(_mm256_castps_si256(v), abs_mask),
                                                  _mm256_sub_epi32(inf_bits, _mm256_set1_epi32(1))));
    /* int8.c's quantize_value: division, clamp to +-1024, round half to even, + zs, clamp */
    __m256 t = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(v, vs), tlo), thi);
    t = _mm256_add_ps(_mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vzs);
    const __m256i q = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(t, qlo), qhi));
    _mm_storeu_si128((__m128i *)(xs + i), _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)));
    vsum = _mm256_add_epi32(vsum, q);
    if ((i & 32767) == 32760) { /* every 4096 steps: lanes stay far below 2^31 */
      total += hsum_epi32(vsum);
      vsum = _mm256_setzero_si256();
    }
  }
  if (!_mm256_testz_si256(bad, bad)) return 0;
  for (; i < k; i++) {
    const float v = mq_load_f32(x, dtype, i);
    if (!(fabsf(v) <= 3.40282347e38f)) return 0;
    const int32_t q = mq_linear_static_quantize1(v, scale, (float)zs);
    xs[i] = (int16_t)q;
    total += q;
  }
  memset(xs + k, 0, sizeof *xs * (size_t)(kp - k));
  *sum = total + hsum_epi32(vsum);
  return 1;
}

/* ---- tiles -------------------------------------------------------------------------------- */

/* The four int16 activations at p, repeated: [a0 a1 a2 a3] x 4 (one broadcast load). */
static inline __m256i bcast4_i16(const int16_t *p) {
  long long v;
  memcpy(&v, p, sizeof v);
  return _mm256_set1_epi64x(v);
}

/* Rows 8h'..8h'+7 (h' = 0, 1) from the four pair-sum registers of one batch row. */
static inline __m256i row_sums(__m256i rows_a, __m256i rows_b) {
  /* hadd: [r0 r1 r4 r5 | r2 r3 r6 r7] (rows relative to rows_a's first); 0xD8 orders them */
  return _mm256_permute4x64_epi64(_mm256_hadd_epi32(rows_a, rows_b), 0xD8);
}

/* The sums of two batch rows over one tile, each register named: written with arrays (and
 * three rows) GCC kept every widened weight live at once and spilled sums to the stack inside
 * the loop, and this path ran at 0.87-0.98x the dynamic kernel's speed. */
static void sums_2(const mq_linear_static_job *job, const uint8_t *tile, int64_t m0, __m256i acc[MR][4]) {
  const int16_t *x0 = (const int16_t *)job->xs + m0 * job->kp, *x1 = x0 + job->kp;
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c02 = c00, c03 = c00;
  __m256i c10 = c00, c11 = c00, c12 = c00, c13 = c00;
  for (int64_t q = job->q0; q < job->q1; q++) {
    const uint8_t *w = tile + q * 64;
    const __m256i a0 = bcast4_i16(x0 + q * 4), a1 = bcast4_i16(x1 + q * 4);
    __m256i w16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)w));
    c00 = _mm256_add_epi32(c00, _mm256_madd_epi16(w16, a0));
    c10 = _mm256_add_epi32(c10, _mm256_madd_epi16(w16, a1));
    w16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(w + 16)));
    c01 = _mm256_add_epi32(c01, _mm256_madd_epi16(w16, a0));
    c11 = _mm256_add_epi32(c11, _mm256_madd_epi16(w16, a1));
    w16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(w + 32)));
    c02 = _mm256_add_epi32(c02, _mm256_madd_epi16(w16, a0));
    c12 = _mm256_add_epi32(c12, _mm256_madd_epi16(w16, a1));
    w16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(w + 48)));
    c03 = _mm256_add_epi32(c03, _mm256_madd_epi16(w16, a0));
    c13 = _mm256_add_epi32(c13, _mm256_madd_epi16(w16, a1));
  }
  acc[0][0] = c00, acc[0][1] = c01, acc[0][2] = c02, acc[0][3] = c03;
  acc[1][0] = c10, acc[1][1] = c11, acc[1][2] = c12, acc[1][3] = c13;
}

static inline __attribute__((always_inline)) void pass(const mq_linear_static_job *job, int64_t t,
                                                       int64_t m0, const int mr) {
  const uint8_t *tile = job->tiles + t * job->tile_bytes;
  __m256i acc[MR][4];
  if (mr == 2) {
    sums_2(job, tile, m0, acc);
  } else { /* mr == 1: the last row of an odd batch */
    for (int h = 0; h < 4; h++) acc[0][h] = _mm256_setzero_si256();
    for (int64_t q = job->q0; q < job->q1; q++) {
      const __m256i a = bcast4_i16((const int16_t *)job->xs + m0 * job->kp + q * 4);
      for (int h = 0; h < 4; h++) {
        const __m256i w16 = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(tile + q * 64 + 16 * h)));
        acc[0][h] = _mm256_add_epi32(acc[0][h], _mm256_madd_epi16(w16, a));
      }
    }
  }
  /* epilogue (linear_static.h), wrapping int32 */
  const int64_t n0 = t * MQ_LINEAR_NR;
  const int64_t rows = mq_linear_rows_in_tile(job->n, t);
  mq_linear_int8_tile_tail tail;
  memcpy(&tail, tile + job->nb * MQ_LINEAR_INT8_BLOCK_BYTES, sizeof tail);
  int32_t zq[MQ_LINEAR_NR];
  float ws[MQ_LINEAR_NR];
  for (int r = 0; r < MQ_LINEAR_NR; r++) {
    int64_t qs;
    memcpy(&qs, (const char *)job->qsum + (n0 + r) * (int64_t)sizeof qs, sizeof qs);
    zq[r] = (int32_t)((uint32_t)job->zs * (uint32_t)qs);
    tail.zero[r] += 128; /* zw */
    ws[r] = job->x_scale * tail.scale[r];
  }
  for (int i = 0; i < mr; i++) {
    int32_t dot[MQ_LINEAR_NR];
    _mm256_storeu_si256((__m256i *)dot, row_sums(acc[i][0], acc[i][1]));
    _mm256_storeu_si256((__m256i *)(dot + 8), row_sums(acc[i][2], acc[i][3]));
    const int64_t m = m0 + i;
    if (job->acc64) {
      for (int64_t r = 0; r < rows; r++) job->acc64[m * job->n + n0 + r] += dot[r];
      continue;
    }
    const __m256i sx = _mm256_set1_epi32(job->sx[m]);
    for (int h = 0; h < 2; h++) {
      __m256i v = _mm256_loadu_si256((const __m256i *)(dot + 8 * h));
      v = _mm256_sub_epi32(v, _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)(tail.zero + 8 * h)), sx));
      v = _mm256_sub_epi32(v, _mm256_loadu_si256((const __m256i *)(zq + 8 * h)));
      _mm256_storeu_si256((__m256i *)(dot + 8 * h), v);
    }
    if (rows == MQ_LINEAR_NR && job->out_dtype == MQ_F32) {
      float *out = (float *)job->out + m * job->n + n0;
      for (int h = 0; h < 2; h++) {
        __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(dot + 8 * h))),
                                 _mm256_loadu_ps(ws + 8 * h));
        if (job->bias) y = _mm256_add_ps(y, _mm256_loadu_ps(job->bias + n0 + 8 * h)); /* no FMA */
        _mm256_storeu_ps(out + 8 * h, y);
      }
    } else {
      mq_linear_static_store(job, m, n0, dot, ws, rows);
    }
  }
}

static void tiles_avx2(const mq_linear_static_job *job, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; t++) {
    int64_t m0 = 0;
    for (; m0 + MR <= job->m; m0 += MR) pass(job, t, m0, MR);
    if (job->m - m0 == 1) pass(job, t, m0, 1);
  }
}

const mq_linear_static_kernels mq_linear_static_kernels_avx2 = {"avx2", 2, quantize_row_avx2, tiles_avx2};
