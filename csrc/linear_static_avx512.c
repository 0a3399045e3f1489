/*
 * linear_static_avx512.c : the packed static-INT8 Linear with AVX-512 and VNNI (vpdpbusd),
 * compiled with the flags of linear_avx512.c and run when cpu.c picked that path.
 *
 * The weight is the dynamic INT8 kernel's packed tiles (linear.h), read the same way: one zmm
 * holds four k of a tile's 16 rows, and one vpdpbusd adds their products with four activation
 * bytes into 16 int32 sums.  What differs from linear_avx512.c: the activations share one
 * scale, so there are no per-block float scales -- the int32 sums run over the whole row (k <=
 * MQ_LINEAR_STATIC_KC) and are converted to float once, in the epilogue, with the zero-point
 * corrections of linear_static.h done in wrapping int32 arithmetic.
 */
#include <immintrin.h>

#include "avx512_store.h"
#include "linear_static.h"

#define MR 4 /* batch rows per pass over a pair of tiles, as linear_avx512.c */

/* ---- input quantization ------------------------------------------------------------------- */

static int quantize_row_avx512(const void *x, mq_dtype dtype, int64_t k, int64_t kp, float scale,
                               int32_t zs, void *xs_out, int64_t *sum) {
  int8_t *xs = xs_out;
  const __m512 vs = _mm512_set1_ps(scale), vzs = _mm512_set1_ps((float)zs);
  const __m512 tlo = _mm512_set1_ps(-1024.0f), thi = _mm512_set1_ps(1024.0f);
  const __m512 qlo = _mm512_set1_ps(-128.0f), qhi = _mm512_set1_ps(127.0f);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf_bits = _mm512_set1_epi32(0x7f800000);
  __m512i vsum = _mm512_setzero_si512();
  int64_t total = 0;
  for (int64_t i = 0; i < kp; i += 16) {
    const __mmask16 mask = mq_mask_first16(k - i);
    const __m512 v = mq_load16_f32(x, dtype, i, mask);
    const __m512i bits = _mm512_and_si512(_mm512_castps_si512(v), abs_mask);
    if (_mm512_cmpge_epu32_mask(bits, inf_bits)) return 0;
    /* int8.c's quantize_value: division, clamp to +-1024, round half to even, + zs, clamp */
    __m512 t = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(v, vs), tlo), thi);
    t = _mm512_add_ps(_mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vzs);
    t = _mm512_min_ps(_mm512_max_ps(t, qlo), qhi);
    const __m512i q = _mm512_maskz_cvttps_epi32(mask, t); /* padding: 0 */
    _mm_storeu_si128((__m128i *)(xs + i), _mm512_cvtepi32_epi8(q));
    vsum = _mm512_add_epi32(vsum, q);
    if ((i & 65535) == 65520) { /* every 4096 steps: lanes stay far below 2^31 */
      total += _mm512_reduce_add_epi32(vsum);
      vsum = _mm512_setzero_si512();
    }
  }
  *sum = total + _mm512_reduce_add_epi32(vsum);
  return 1;
}

/* ---- output ------------------------------------------------------------------------------- */

/* y[0..rows) into out row m at column n0, in out_dtype. */
static inline void store_rows(const mq_linear_static_job *job, int64_t m, int64_t n0, __m512 y, int64_t rows) {
  mq_store16(job->out, job->out_dtype, m * job->n + n0, y, mq_mask_first16(rows));
}

/* The per-tile constants of the epilogue. */
typedef struct {
  __m512i zw;   /* zero + 128 */
  __m512i zq;   /* zs * qsum, wrapping */
  __m512 ws;    /* x_scale * w_scale (one float32 rounding) */
  __m512 bias;
  int64_t n0, rows;
} tile_consts;

static inline tile_consts consts_of(const mq_linear_static_job *job, const uint8_t *tile, int64_t t) {
  const uint8_t *tail = tile + job->nb * MQ_LINEAR_INT8_BLOCK_BYTES; /* mq_linear_int8_tile_tail */
  tile_consts c;
  c.n0 = t * MQ_LINEAR_NR;
  c.rows = mq_linear_rows_in_tile(job->n, t);
  c.zw = _mm512_add_epi32(_mm512_loadu_si512(tail + 64), _mm512_set1_epi32(128));
  /* qsum mod 2^32 (the wrapping sum of linear_static.h): the low halves of 16 int64 */
  const __m256i q_lo = _mm512_cvtepi64_epi32(_mm512_loadu_si512(job->qsum + c.n0));
  const __m256i q_hi = _mm512_cvtepi64_epi32(_mm512_loadu_si512(job->qsum + c.n0 + 8));
  const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(q_lo), q_hi, 1);
  c.zq = _mm512_mullo_epi32(_mm512_set1_epi32(job->zs), q);
  c.ws = _mm512_mul_ps(_mm512_set1_ps(job->x_scale), _mm512_loadu_ps((const float *)tail));
  c.bias = job->bias ? _mm512_maskz_loadu_ps(mq_mask_first16(c.rows), job->bias + c.n0) : _mm512_setzero_ps();
  return c;
}

/* acc = sum xs * wu of batch row m and one tile: finish it (linear_static.h) and store, or add
 * it to acc64 when the row is summed in chunks. */
static inline void finish(const mq_linear_static_job *job, const tile_consts *c, int64_t m, __m512i acc) {
  if (job->acc64) {
    int32_t part[MQ_LINEAR_NR];
    _mm512_storeu_si512(part, acc);
    for (int64_t r = 0; r < c->rows; r++) job->acc64[m * job->n + c->n0 + r] += part[r];
    return;
  }
  acc = _mm512_sub_epi32(acc, _mm512_mullo_epi32(c->zw, _mm512_set1_epi32(job->sx[m])));
  acc = _mm512_sub_epi32(acc, c->zq);
  __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), c->ws);
  if (job->bias) y = _mm512_add_ps(y, c->bias); /* separate roundings, as the reference */
  store_rows(job, m, c->n0, y, c->rows);
}

typedef int32_t mq_bytes4 __attribute__((may_alias, aligned(1))); /* four int8, any alignment */

/* vpdpbusd with the four activation bytes at p broadcast from memory ({1to16}). */
static inline __m512i dpbusd_bcast(__m512i acc, __m512i w, const int8_t *p) {
  __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const mq_bytes4 *)(const void *)p));
  return acc;
}

static inline __m512i bcast4(const int8_t *p) {
  int32_t v;
  memcpy(&v, p, sizeof v);
  return _mm512_set1_epi32(v);
}

/* Batch 1: one tile, four independent sums (quads q, q+1, q+2, q+3: the quad count is a
 * multiple of 8). */
static void gemv(const mq_linear_static_job *job, int64_t t) {
  const uint8_t *tile = job->tiles + t * job->tile_bytes;
  const int8_t *a = job->xs;
  __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
  for (int64_t q = job->q0; q < job->q1; q += 4) {
    const uint8_t *w = tile + q * 64;
    acc0 = dpbusd_bcast(acc0, _mm512_loadu_si512(w), a + q * 4);
    acc1 = dpbusd_bcast(acc1, _mm512_loadu_si512(w + 64), a + q * 4 + 4);
    acc2 = dpbusd_bcast(acc2, _mm512_loadu_si512(w + 128), a + q * 4 + 8);
    acc3 = dpbusd_bcast(acc3, _mm512_loadu_si512(w + 192), a + q * 4 + 12);
  }
  const tile_consts c = consts_of(job, tile, t);
  finish(job, &c, 0, _mm512_add_epi32(_mm512_add_epi32(acc0, acc1), _mm512_add_epi32(acc2, acc3)));
}

/* Batch > 1: `nt` tiles (1 or 2) times `mr` batch rows (1..MR) per pass, so each weight load
 * feeds mr vpdpbusd and each activation broadcast feeds nt. */
static inline __attribute__((always_inline)) void gemm(const mq_linear_static_job *job, int64_t t,
                                                       int64_t m0, const int nt, const int mr) {
  const int64_t kp = job->kp;
  const uint8_t *tile[2] = {job->tiles + t * job->tile_bytes, job->tiles + (t + 1) * job->tile_bytes};
  __m512i acc[2][MR];
  for (int j = 0; j < nt; j++)
    for (int i = 0; i < mr; i++) acc[j][i] = _mm512_setzero_si512();
  for (int64_t q = job->q0; q < job->q1; q++) {
    __m512i w[2];
    for (int j = 0; j < nt; j++) w[j] = _mm512_loadu_si512(tile[j] + q * 64);
    for (int i = 0; i < mr; i++) {
      const __m512i a = bcast4((const int8_t *)job->xs + (m0 + i) * kp + q * 4);
      for (int j = 0; j < nt; j++) acc[j][i] = _mm512_dpbusd_epi32(acc[j][i], w[j], a);
    }
  }
  for (int j = 0; j < nt; j++) {
    const tile_consts c = consts_of(job, tile[j], t + j);
    for (int i = 0; i < mr; i++) finish(job, &c, m0 + i, acc[j][i]);
  }
}

/* The common pass, two tiles times four rows, with its eight sums and two weights named: written
 * through gemm()'s arrays, GCC copied the sums between registers at every quad and re-read the
 * weights for each row (static ran at 0.88-0.93x of the dynamic kernel on 384x384 at batch
 * 32-180; benchmarks/RESULTS.md).  gemm() keeps the edge passes (one tile, fewer rows). */
static void gemm_2x4(const mq_linear_static_job *job, int64_t t, int64_t m0) {
  const int64_t kp = job->kp;
  const uint8_t *w0p = job->tiles + t * job->tile_bytes, *w1p = w0p + job->tile_bytes;
  const int8_t *x0 = (const int8_t *)job->xs + m0 * kp, *x1 = x0 + kp, *x2 = x1 + kp, *x3 = x2 + kp;
  __m512i a00 = _mm512_setzero_si512(), a01 = a00, a02 = a00, a03 = a00;
  __m512i a10 = a00, a11 = a00, a12 = a00, a13 = a00;
  for (int64_t q = job->q0; q < job->q1; q++) {
    const __m512i w0 = _mm512_loadu_si512(w0p + q * 64), w1 = _mm512_loadu_si512(w1p + q * 64);
    __m512i a = bcast4(x0 + q * 4);
    a00 = _mm512_dpbusd_epi32(a00, w0, a);
    a10 = _mm512_dpbusd_epi32(a10, w1, a);
    a = bcast4(x1 + q * 4);
    a01 = _mm512_dpbusd_epi32(a01, w0, a);
    a11 = _mm512_dpbusd_epi32(a11, w1, a);
    a = bcast4(x2 + q * 4);
    a02 = _mm512_dpbusd_epi32(a02, w0, a);
    a12 = _mm512_dpbusd_epi32(a12, w1, a);
    a = bcast4(x3 + q * 4);
    a03 = _mm512_dpbusd_epi32(a03, w0, a);
    a13 = _mm512_dpbusd_epi32(a13, w1, a);
  }
  const tile_consts c0 = consts_of(job, w0p, t), c1 = consts_of(job, w1p, t + 1);
  finish(job, &c0, m0, a00);
  finish(job, &c0, m0 + 1, a01);
  finish(job, &c0, m0 + 2, a02);
  finish(job, &c0, m0 + 3, a03);
  finish(job, &c1, m0, a10);
  finish(job, &c1, m0 + 1, a11);
  finish(job, &c1, m0 + 2, a12);
  finish(job, &c1, m0 + 3, a13);
}

static inline __attribute__((always_inline)) void gemm_rows(const mq_linear_static_job *job, int64_t t, const int nt) {
  int64_t m0 = 0;
  if (nt == 2)
    for (; m0 + MR <= job->m; m0 += MR) gemm_2x4(job, t, m0);
  for (; m0 + MR <= job->m; m0 += MR) gemm(job, t, m0, nt, MR);
  switch (job->m - m0) {
    case 3: gemm(job, t, m0, nt, 3); break;
    case 2: gemm(job, t, m0, nt, 2); break;
    case 1: gemm(job, t, m0, nt, 1); break;
    default: break;
  }
}

static void tiles_avx512(const mq_linear_static_job *job, int64_t t0, int64_t t1) {
  if (job->m == 1) {
    for (int64_t t = t0; t < t1; t++) gemv(job, t);
    return;
  }
  int64_t t = t0;
  for (; t + 2 <= t1; t += 2) gemm_rows(job, t, 2);
  if (t < t1) gemm_rows(job, t, 1);
}

const mq_linear_static_kernels mq_linear_static_kernels_avx512_vnni = {"avx512_vnni", 1, quantize_row_avx512,
                                                                       tiles_avx512};
