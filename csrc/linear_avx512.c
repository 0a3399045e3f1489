/*
 * linear_avx512.c : the quantized Linear forward with AVX-512 and VNNI (vpdpbusd), compiled
 * with -mavx512f/bw/vl/dq -mavx512vnni and run only when cpu.c says the CPU and OS can.
 *
 * One zmm register holds four consecutive k of the 16 rows of a tile (linear.h), so one
 * vpdpbusd multiplies 64 weight bytes by four activation bytes broadcast to every lane and
 * adds into 16 per-row int32 sums.  vpdpbusd takes unsigned x signed bytes: the weights are
 * the unsigned side (INT8 stored as w + 128, INT4 nibbles 0..15), the int8 activations the
 * signed side; for INT8 the +128 is taken back exactly by starting each block's sum at
 * -128 * asum[b].  Batch 1 streams one tile at a time; larger batches take two tiles times up
 * to MR batch rows per pass, so each weight load and each activation broadcast is reused.
 */
#include <immintrin.h>

#include "avx512_store.h"
#include "linear.h"

#define MR 4 /* batch rows per pass over a tile */

/* ---- activations -------------------------------------------------------------------------- */

static int quantize_row_avx512(const void *x, mq_dtype dtype, int64_t k, int64_t kp, int8_t *xq,
                               float *d, int32_t *asum) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512i qlo = _mm512_set1_epi32(-127), qhi = _mm512_set1_epi32(127);
  for (int64_t b = 0; b < kp / MQ_LINEAR_QK; b++) {
    const int64_t i0 = b * MQ_LINEAR_QK;
    const __m512 v0 = mq_load16_f32(x, dtype, i0, mq_mask_first16(k - i0));
    const __m512 v1 = mq_load16_f32(x, dtype, i0 + 16, mq_mask_first16(k - i0 - 16));
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
  mq_store16(job->out, job->out_dtype, m * job->n + n0, y, mq_mask_first16(rows));
}

static inline __m512i bcast4(const int8_t *p) {
  int32_t v;
  memcpy(&v, p, sizeof v);
  return _mm512_set1_epi32(v);
}

/* acc + dot products of w's unsigned bytes with the four signed bytes at p, broadcast to every
 * lane from memory ({1to16}): one instruction, where the intrinsics give a separate broadcast.
 * Batch 1 uses it (fewer instructions per weight byte keep more loads in flight); the batched
 * passes share one register broadcast between two tiles instead, which measured faster. */
typedef int32_t mq_bytes4 __attribute__((may_alias, aligned(1))); /* four int8, any alignment */

static inline __m512i dpbusd_bcast(__m512i acc, __m512i w, const int8_t *p) {
  __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const mq_bytes4 *)(const void *)p));
  return acc;
}

/* ---- INT8 --------------------------------------------------------------------------------- */

/* Batch 1: one tile, two independent sums per block (even / odd quads) for more parallelism. */
static void int8_gemv(const mq_linear_job *job, int64_t t) {
  const int64_t nb = job->nb;
  const uint8_t *tile = job->tiles + t * job->tile_bytes;
  __m512 facc = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t *w = tile + b * MQ_LINEAR_INT8_BLOCK_BYTES;
    const int8_t *a = job->xq + b * MQ_LINEAR_QK;
    __m512i acc = _mm512_set1_epi32(job->acc_start[b]), acc2 = _mm512_setzero_si512();
    for (int c = 0; c < 8; c += 2) {
      acc = dpbusd_bcast(acc, _mm512_loadu_si512(w + c * 64), a + c * 4);
      acc2 = dpbusd_bcast(acc2, _mm512_loadu_si512(w + c * 64 + 64), a + c * 4 + 4);
    }
    facc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc, acc2)), _mm512_set1_ps(job->d[b]), facc);
  }
  const uint8_t *tail = tile + nb * MQ_LINEAR_INT8_BLOCK_BYTES; /* mq_linear_int8_tile_tail */
  const int64_t n0 = t * MQ_LINEAR_NR, rows = mq_linear_tile_rows(job, t);
  const __m512 bias = job->bias ? _mm512_maskz_loadu_ps(mq_mask_first16(rows), job->bias + n0) : _mm512_setzero_ps();
  const __m512 zero = _mm512_cvtepi32_ps(_mm512_loadu_si512(tail + 64));
  const __m512 diff = _mm512_fnmadd_ps(zero, _mm512_set1_ps(job->corr[0]), facc);
  store_rows(job, 0, n0, _mm512_fmadd_ps(_mm512_loadu_ps(tail), diff, bias), rows);
}

/* Batch > 1: `nt` tiles (1 or 2) times `mr` batch rows (1..MR) per pass, so each weight load
 * feeds mr vpdpbusd and each activation broadcast feeds nt. */
static inline __attribute__((always_inline)) void int8_gemm(const mq_linear_job *job, int64_t t,
                                                            int64_t m0, const int nt, const int mr) {
  const int64_t nb = job->nb, kp = job->kp;
  const uint8_t *tile[2] = {job->tiles + t * job->tile_bytes, job->tiles + (t + 1) * job->tile_bytes};
  __m512 facc[2][MR];
  for (int j = 0; j < nt; j++)
    for (int i = 0; i < mr; i++) facc[j][i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; b++) {
    __m512i acc[2][MR];
    for (int i = 0; i < mr; i++) {
      const __m512i start = _mm512_set1_epi32(job->acc_start[(m0 + i) * nb + b]);
      for (int j = 0; j < nt; j++) acc[j][i] = start;
    }
    for (int c = 0; c < 8; c++) {
      __m512i w[2];
      for (int j = 0; j < nt; j++) w[j] = _mm512_loadu_si512(tile[j] + b * MQ_LINEAR_INT8_BLOCK_BYTES + c * 64);
      for (int i = 0; i < mr; i++) {
        const __m512i a = bcast4(job->xq + (m0 + i) * kp + b * MQ_LINEAR_QK + c * 4);
        for (int j = 0; j < nt; j++) acc[j][i] = _mm512_dpbusd_epi32(acc[j][i], w[j], a);
      }
    }
    for (int i = 0; i < mr; i++) {
      const __m512 db = _mm512_set1_ps(job->d[(m0 + i) * nb + b]);
      for (int j = 0; j < nt; j++) facc[j][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[j][i]), db, facc[j][i]);
    }
  }
  for (int j = 0; j < nt; j++) {
    const uint8_t *tail = tile[j] + nb * MQ_LINEAR_INT8_BLOCK_BYTES; /* mq_linear_int8_tile_tail */
    const __m512 scale = _mm512_loadu_ps(tail);
    const __m512 zero = _mm512_cvtepi32_ps(_mm512_loadu_si512(tail + 64));
    const int64_t n0 = (t + j) * MQ_LINEAR_NR, rows = mq_linear_tile_rows(job, t + j);
    const __m512 bias = job->bias ? _mm512_maskz_loadu_ps(mq_mask_first16(rows), job->bias + n0) : _mm512_setzero_ps();
    for (int i = 0; i < mr; i++) {
      const __m512 diff = _mm512_fnmadd_ps(zero, _mm512_set1_ps(job->corr[m0 + i]), facc[j][i]);
      store_rows(job, m0 + i, n0, _mm512_fmadd_ps(scale, diff, bias), rows);
    }
  }
}

static inline __attribute__((always_inline)) void int8_gemm_rows(const mq_linear_job *job, int64_t t, const int nt) {
  int64_t m0 = 0;
  for (; m0 + MR <= job->m; m0 += MR) int8_gemm(job, t, m0, nt, MR);
  switch (job->m - m0) {
    case 3: int8_gemm(job, t, m0, nt, 3); break;
    case 2: int8_gemm(job, t, m0, nt, 2); break;
    case 1: int8_gemm(job, t, m0, nt, 1); break;
    default: break;
  }
}

static void int8_tiles_avx512(const mq_linear_job *job, int64_t t0, int64_t t1) {
  if (job->m == 1) {
    for (int64_t t = t0; t < t1; t++) int8_gemv(job, t);
    return;
  }
  int64_t t = t0;
  for (; t + 2 <= t1; t += 2) int8_gemm_rows(job, t, 2);
  if (t < t1) int8_gemm_rows(job, t, 1);
}

/* ---- INT4 --------------------------------------------------------------------------------- */

/* One group of one tile: scale and zero point of its 16 rows as floats. */
static inline void int4_group_params(const uint8_t *p, __m512 *scale, __m512 *zero) {
  *scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
  *zero = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + 32))));
}

/* Batch 1: one tile; low and high nibbles go to two independent sums. */
static void int4_gemv(const mq_linear_job *job, int64_t t) {
  const int64_t bpg = job->group / MQ_LINEAR_QK;
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const uint8_t *p = job->tiles + t * job->tile_bytes;
  __m512 facc = _mm512_setzero_ps();
  for (int64_t grp = 0; grp < job->ng; grp++) {
    __m512 scale, zero;
    int4_group_params(p, &scale, &zero);
    p += MQ_LINEAR_INT4_GROUP_HEADER;
    __m512 gacc = _mm512_setzero_ps();
    for (int64_t bb = 0; bb < bpg; bb++, p += MQ_LINEAR_INT4_BLOCK_BYTES) {
      const int64_t b = grp * bpg + bb;
      const int8_t *a = job->xq + b * MQ_LINEAR_QK;
      __m512i acc = _mm512_setzero_si512(), acc2 = _mm512_setzero_si512();
      /* high nibbles are used in place, as 16 * u (raw & 0xf0): the sum is shifted back once */
      for (int c = 0; c < 4; c++) {
        const __m512i raw = _mm512_loadu_si512(p + c * 64);
        acc = dpbusd_bcast(acc, _mm512_and_si512(raw, low4), a + c * 4);
        acc2 = dpbusd_bcast(acc2, _mm512_andnot_si512(low4, raw), a + 16 + c * 4);
      }
      const __m512i dot = _mm512_add_epi32(acc, _mm512_srai_epi32(acc2, 4));
      gacc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(job->d[b]), gacc);
    }
    facc = _mm512_fmadd_ps(scale, _mm512_fnmadd_ps(zero, _mm512_set1_ps(job->corr[grp]), gacc), facc);
  }
  const int64_t n0 = t * MQ_LINEAR_NR, rows = mq_linear_tile_rows(job, t);
  const __m512 bias = job->bias ? _mm512_maskz_loadu_ps(mq_mask_first16(rows), job->bias + n0) : _mm512_setzero_ps();
  store_rows(job, 0, n0, _mm512_add_ps(facc, bias), rows);
}

/* Batch > 1: `nt` tiles times `mr` batch rows per pass (see int8_gemm). */
static inline __attribute__((always_inline)) void int4_gemm(const mq_linear_job *job, int64_t t,
                                                            int64_t m0, const int nt, const int mr) {
  const int64_t nb = job->nb, kp = job->kp, bpg = job->group / MQ_LINEAR_QK;
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const uint8_t *p[2] = {job->tiles + t * job->tile_bytes, job->tiles + (t + 1) * job->tile_bytes};
  __m512 facc[2][MR];
  for (int j = 0; j < nt; j++)
    for (int i = 0; i < mr; i++) facc[j][i] = _mm512_setzero_ps();
  for (int64_t grp = 0; grp < job->ng; grp++) {
    __m512 gacc[2][MR];
    for (int j = 0; j < nt; j++)
      for (int i = 0; i < mr; i++) gacc[j][i] = _mm512_setzero_ps();
    const uint8_t *hdr[2] = {p[0], p[1]};
    for (int j = 0; j < nt; j++) p[j] += MQ_LINEAR_INT4_GROUP_HEADER;
    for (int64_t bb = 0; bb < bpg; bb++) {
      const int64_t b = grp * bpg + bb;
      __m512i acc[2][MR];
      for (int j = 0; j < nt; j++)
        for (int i = 0; i < mr; i++) acc[j][i] = _mm512_setzero_si512();
      for (int c = 0; c < 4; c++) {
        __m512i lo[2], hi[2];
        for (int j = 0; j < nt; j++) {
          const __m512i raw = _mm512_loadu_si512(p[j] + c * 64);
          lo[j] = _mm512_and_si512(raw, low4);
          hi[j] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
        }
        for (int i = 0; i < mr; i++) {
          const int8_t *a = job->xq + (m0 + i) * kp + b * MQ_LINEAR_QK + c * 4;
          const __m512i xl = bcast4(a), xh = bcast4(a + 16);
          for (int j = 0; j < nt; j++) {
            acc[j][i] = _mm512_dpbusd_epi32(acc[j][i], lo[j], xl);
            acc[j][i] = _mm512_dpbusd_epi32(acc[j][i], hi[j], xh);
          }
        }
      }
      for (int j = 0; j < nt; j++) p[j] += MQ_LINEAR_INT4_BLOCK_BYTES;
      for (int i = 0; i < mr; i++) {
        const __m512 db = _mm512_set1_ps(job->d[(m0 + i) * nb + b]);
        for (int j = 0; j < nt; j++) gacc[j][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[j][i]), db, gacc[j][i]);
      }
    }
    for (int j = 0; j < nt; j++) {
      __m512 scale, zero;
      int4_group_params(hdr[j], &scale, &zero);
      for (int i = 0; i < mr; i++) {
        const __m512 D = _mm512_set1_ps(job->corr[(m0 + i) * job->ng + grp]);
        facc[j][i] = _mm512_fmadd_ps(scale, _mm512_fnmadd_ps(zero, D, gacc[j][i]), facc[j][i]);
      }
    }
  }
  for (int j = 0; j < nt; j++) {
    const int64_t n0 = (t + j) * MQ_LINEAR_NR, rows = mq_linear_tile_rows(job, t + j);
    const __m512 bias = job->bias ? _mm512_maskz_loadu_ps(mq_mask_first16(rows), job->bias + n0) : _mm512_setzero_ps();
    for (int i = 0; i < mr; i++) store_rows(job, m0 + i, n0, _mm512_add_ps(facc[j][i], bias), rows);
  }
}

static inline __attribute__((always_inline)) void int4_gemm_rows(const mq_linear_job *job, int64_t t, const int nt) {
  int64_t m0 = 0;
  for (; m0 + MR <= job->m; m0 += MR) int4_gemm(job, t, m0, nt, MR);
  switch (job->m - m0) {
    case 3: int4_gemm(job, t, m0, nt, 3); break;
    case 2: int4_gemm(job, t, m0, nt, 2); break;
    case 1: int4_gemm(job, t, m0, nt, 1); break;
    default: break;
  }
}

static void int4_tiles_avx512(const mq_linear_job *job, int64_t t0, int64_t t1) {
  if (job->m == 1) {
    for (int64_t t = t0; t < t1; t++) int4_gemv(job, t);
    return;
  }
  int64_t t = t0;
  for (; t + 2 <= t1; t += 2) int4_gemm_rows(job, t, 2);
  if (t < t1) int4_gemm_rows(job, t, 1);
}

/* Static INT8: vpdpbusd takes exactly unsigned x signed bytes, four products per lane. */
static int64_t dot_u8s8_avx512(const uint8_t *xu, const int8_t *ws, int64_t len) {
  __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 128 <= len; i += 128) {
    acc0 = _mm512_dpbusd_epi32(acc0, _mm512_loadu_si512(xu + i), _mm512_loadu_si512(ws + i));
    acc1 = _mm512_dpbusd_epi32(acc1, _mm512_loadu_si512(xu + i + 64), _mm512_loadu_si512(ws + i + 64));
  }
  for (; i < len; i += 64) {
    const int64_t left = len - i;
    const __mmask64 mask = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
    acc0 = _mm512_dpbusd_epi32(acc0, _mm512_maskz_loadu_epi8(mask, xu + i),
                               _mm512_maskz_loadu_epi8(mask, ws + i));
  }
  return _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1)); /* exact: len <= BLOCK */
}

const mq_linear_kernels mq_linear_kernels_avx512_vnni = {
    "avx512_vnni", quantize_row_avx512, int8_tiles_avx512, int4_tiles_avx512, dot_u8s8_avx512,
    /* No separate batch kernel: a cache-blocked GEMM (k-chunks of 512 kept in L1, M-panels of
     * 64 rows, 3x4 and 2x4 tile x row register blocks, INT4 2x6) measured 2-6% slower than
     * int8_gemm / int4_gemm above at batch 8, 32 and 180 on an AMD EPYC (Zen 4), where these
     * already reach ~175 of the ~220 GMAC/s one core's vpdpbusd gives, and the one
     * int32 -> float conversion and multiply-add per block and output that the block scales
     * need take about a fifth of that. */
    NULL, NULL, 0, 0, NULL};
