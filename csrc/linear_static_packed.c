/*
 * linear_static_packed.c : the packed static-INT8 Linear (layout and formulas in
 * linear_static.h; contract in mono_quant.h, mq_linear_static_packed): packing, the forward
 * driver (checks, scratch, input quantization, threads) and the portable tile function.
 * The SIMD paths (linear_static_avx2.c, linear_static_avx512.c) are picked with the dynamic
 * Linear's path of the same name (cpu.c), so MONO_QUANT_DISABLE_SIMD and the test hook
 * set_linear_isa force both alike.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "linear_static.h"
#include "threadpool.h"

#define MQ_LS_MIN_ACT_PER_THREAD (1 << 15)

static int64_t tiles_of(int64_t n) { return (n + MQ_LINEAR_NR - 1) / MQ_LINEAR_NR; }

/* ---- the table for the active path ------------------------------------------------------ */

static const mq_linear_static_kernels *active_kernels(void) {
#if defined(__x86_64__)
  const char *name = mq_linear_active()->name;
  if (strcmp(name, mq_linear_static_kernels_avx512_vnni.name) == 0) return &mq_linear_static_kernels_avx512_vnni;
  if (strcmp(name, mq_linear_static_kernels_avx2.name) == 0) return &mq_linear_static_kernels_avx2;
#endif
  return &mq_linear_static_kernels_portable;
}

const char *mq_linear_static_isa_name(void) { return active_kernels()->name; }

/* ---- sizes and packing -------------------------------------------------------------------- */

mq_status mq_linear_static_packed_size(int64_t n, int64_t k, int64_t *bytes) {
  int64_t int8_bytes;
  mq_status st = mq_linear_int8_packed_size(n, k, &int8_bytes);
  if (st != MQ_OK) return st;
  *bytes = int8_bytes + tiles_of(n) * MQ_LINEAR_NR * (int64_t)sizeof(int64_t) + MQ_LINEAR_STATIC_TAIL;
  return MQ_OK;
}

mq_status mq_linear_static_pack(const void *qweight, mq_dtype q_dtype, const float *scale,
                                const int32_t *zero_point, int64_t n, int64_t k, void *packed,
                                int64_t packed_bytes, int num_threads) {
  int64_t bytes, int8_bytes;
  mq_status st = mq_linear_static_packed_size(n, k, &bytes);
  if (st != MQ_OK) return st;
  if (packed_bytes != bytes) return MQ_ERR_SHAPE;
  int8_bytes = bytes - tiles_of(n) * MQ_LINEAR_NR * (int64_t)sizeof(int64_t) - MQ_LINEAR_STATIC_TAIL;
  st = mq_linear_int8_pack(qweight, q_dtype, scale, zero_point, n, k, packed, int8_bytes, num_threads);
  if (st != MQ_OK) return st;
  uint8_t *qsum = (uint8_t *)packed + int8_bytes;
  for (int64_t r = 0; r < tiles_of(n) * MQ_LINEAR_NR; r++) {
    int64_t s = 0;
    if (r < n) {
      if (q_dtype == MQ_I8) {
        const int8_t *row = (const int8_t *)qweight + r * k;
        for (int64_t i = 0; i < k; i++) s += row[i];
      } else {
        const uint8_t *row = (const uint8_t *)qweight + r * k;
        for (int64_t i = 0; i < k; i++) s += row[i];
      }
      s -= k * (int64_t)zero_point[r];
    }
    memcpy(qsum + r * (int64_t)sizeof s, &s, sizeof s);
  }
  uint8_t tail[MQ_LINEAR_STATIC_TAIL] = {0};
  float max_scale = 0.0f; /* every scale is finite and > 0: mq_linear_int8_pack checked */
  for (int64_t r = 0; r < n; r++) max_scale = scale[r] > max_scale ? scale[r] : max_scale;
  memcpy(tail, &max_scale, sizeof max_scale);
  memcpy(qsum + tiles_of(n) * MQ_LINEAR_NR * (int64_t)sizeof(int64_t), tail, sizeof tail);
  return MQ_OK;
}

/* ---- portable path ------------------------------------------------------------------------ */

static int quantize_row_portable(const void *x, mq_dtype dtype, int64_t k, int64_t kp, float scale,
                                 int32_t zs, void *xs_out, int64_t *sum) {
  int8_t *xs = xs_out;
  int64_t s = 0;
  for (int64_t i = 0; i < k; i++) {
    const float v = mq_load_f32(x, dtype, i);
    if (!(fabsf(v) <= 3.40282347e38f)) return 0;
    const int32_t q = mq_linear_static_quantize1(v, scale, (float)zs);
    xs[i] = (int8_t)q;
    s += q;
  }
  memset(xs + k, 0, (size_t)(kp - k));
  *sum = s;
  return 1;
}

static int64_t qsum_at(const int64_t *qsum, int64_t r) {
  int64_t v;
  memcpy(&v, (const char *)qsum + r * (int64_t)sizeof v, sizeof v); /* any alignment */
  return v;
}

static void tiles_portable(const mq_linear_static_job *job, int64_t t0, int64_t t1) {
  const int64_t nb = job->nb;
  for (int64_t t = t0; t < t1; t++) {
    const uint8_t *tile = job->tiles + t * job->tile_bytes;
    mq_linear_int8_tile_tail tail;
    memcpy(&tail, tile + nb * MQ_LINEAR_INT8_BLOCK_BYTES, sizeof tail);
    const int64_t n0 = t * MQ_LINEAR_NR;
    const int64_t rows = mq_linear_rows_in_tile(job->n, t);
    float ws[MQ_LINEAR_NR];
    for (int r = 0; r < MQ_LINEAR_NR; r++) ws[r] = job->x_scale * tail.scale[r];
    for (int64_t m = 0; m < job->m; m++) {
      const int8_t *a = (const int8_t *)job->xs + m * job->kp;
      int32_t acc[MQ_LINEAR_NR] = {0};
      for (int64_t q = job->q0; q < job->q1; q++) {
        const uint8_t *w = tile + q * 64;
        for (int r = 0; r < MQ_LINEAR_NR; r++)
          for (int j = 0; j < 4; j++) acc[r] += (int32_t)w[r * 4 + j] * (int32_t)a[q * 4 + j];
      }
      if (job->acc64) {
        for (int64_t r = 0; r < rows; r++) job->acc64[m * job->n + n0 + r] += acc[r];
        continue;
      }
      /* exact in wrapping 32-bit arithmetic (linear_static.h): unsigned, so no overflow UB */
      for (int r = 0; r < MQ_LINEAR_NR; r++) {
        const uint32_t zw = (uint32_t)(tail.zero[r] + 128);
        acc[r] = (int32_t)((uint32_t)acc[r] - zw * (uint32_t)job->sx[m] -
                           (uint32_t)job->zs * (uint32_t)qsum_at(job->qsum, n0 + r));
      }
      mq_linear_static_store(job, m, n0, acc, ws, rows);
    }
  }
}

const mq_linear_static_kernels mq_linear_static_kernels_portable = {"portable", 1, quantize_row_portable,
                                                                    tiles_portable};

/* ---- forward driver ----------------------------------------------------------------------- */

static mq_status check_packed(const void *packed, int64_t packed_bytes, int64_t n, int64_t k) {
  mq_linear_header h;
  if (packed == NULL || packed_bytes < (int64_t)sizeof h) return MQ_ERR_LAYOUT;
  memcpy(&h, packed, sizeof h);
  if (memcmp(h.magic, MQ_LINEAR_MAGIC_INT8, sizeof h.magic) != 0 || h.version != MQ_LINEAR_VERSION ||
      h.n != n || h.k != k || h.group_size != 0)
    return MQ_ERR_LAYOUT;
  int64_t bytes;
  if (mq_linear_static_packed_size(n, k, &bytes) != MQ_OK || bytes != packed_bytes) return MQ_ERR_LAYOUT;
  return MQ_OK;
}

typedef struct {
  const mq_linear_static_kernels *kern;
  const void *x;
  mq_dtype x_dtype;
  int64_t k, kp;
  float scale;
  int32_t zs;
  char *xs;
  int64_t *sx;
  atomic_int nonfinite;
} act_job;

static void quantize_rows(void *ctx, int64_t r0, int64_t r1) {
  act_job *job = ctx;
  const size_t esize = mq_dtype_size(job->x_dtype);
  for (int64_t r = r0; r < r1; r++) {
    const void *row = (const char *)job->x + (size_t)(r * job->k) * esize;
    if (!job->kern->quantize_row(row, job->x_dtype, job->k, job->kp, job->scale, job->zs,
                                 job->xs + r * job->kp * job->kern->xs_size, job->sx + r)) {
      atomic_store(&job->nonfinite, 1);
      return;
    }
  }
}

/* The tiles of one job, as an mq_range_fn for mq_parallel_chunks (as in linear.c). */
typedef struct {
  const mq_linear_static_job *job;
  void (*tiles)(const mq_linear_static_job *job, int64_t t0, int64_t t1);
} tiles_ctx;

static void run_tiles(void *ctx, int64_t t0, int64_t t1) {
  const tiles_ctx *c = ctx;
  c->tiles(c->job, t0, t1);
}

static void run_job(const mq_linear_static_job *job, const mq_linear_static_kernels *kern, int num_threads) {
  const int64_t tiles = tiles_of(job->n);
  int parts;
  const int64_t chunk =
      mq_linear_tile_chunk(tiles, MQ_LINEAR_NR * 4 * (job->q1 - job->q0) * job->m, job->m, num_threads, &parts);
  tiles_ctx tc = {job, kern->tiles};
  mq_parallel_chunks(tiles, chunk, parts, run_tiles, &tc);
}

/* k > MQ_LINEAR_STATIC_KC: int64 sums over chunks of KC, then the epilogue in int64. */
static mq_status run_long_rows(mq_linear_static_job *job, const mq_linear_static_kernels *kern,
                               const int64_t *sx64, int num_threads) {
  int64_t *acc64 = calloc((size_t)job->m * (size_t)job->n, sizeof(int64_t));
  if (acc64 == NULL) return MQ_ERR_NOMEM;
  job->acc64 = acc64;
  const int64_t quads = job->kp / 4, step = MQ_LINEAR_STATIC_KC / 4;
  for (int64_t q0 = 0; q0 < quads; q0 += step) {
    job->q0 = q0;
    job->q1 = q0 + step < quads ? q0 + step : quads;
    run_job(job, kern, num_threads);
  }
  for (int64_t c = 0; c < job->n; c++) {
    mq_linear_int8_tile_tail tail;
    memcpy(&tail, job->tiles + (c / MQ_LINEAR_NR) * job->tile_bytes + job->nb * MQ_LINEAR_INT8_BLOCK_BYTES,
           sizeof tail);
    const int64_t zw = (int64_t)tail.zero[c % MQ_LINEAR_NR] + 128;
    const float ws = job->x_scale * tail.scale[c % MQ_LINEAR_NR];
    for (int64_t m = 0; m < job->m; m++) {
      const int64_t total = acc64[m * job->n + c] - zw * sx64[m] - (int64_t)job->zs * qsum_at(job->qsum, c);
      float v = (float)total * ws;
      if (job->bias) v = v + job->bias[c];
      mq_store_f32(job->out, job->out_dtype, m * job->n + c, v);
    }
  }
  free(acc64);
  return MQ_OK;
}

static size_t align64(size_t v) { return (v + 63) & ~(size_t)63; }

/* 1 if every value of a float32 bias is finite (written to vectorize). */
static int finite_f32(const float *v, int64_t n) {
  int bad = 0;
  for (int64_t i = 0; i < n; i++) bad |= !(fabsf(v[i]) <= 3.40282347e38f);
  return !bad;
}

mq_status mq_linear_static_packed(const void *x, mq_dtype x_dtype, int64_t m, float x_scale,
                                  int32_t x_zero_point, mq_dtype x_qdtype, const void *packed,
                                  int64_t packed_bytes, int64_t n, int64_t k, const void *bias,
                                  mq_dtype bias_dtype, void *out, int num_threads) {
  if (!mq_is_float_dtype(x_dtype) || (bias != NULL && !mq_is_float_dtype(bias_dtype)) ||
      (x_qdtype != MQ_I8 && x_qdtype != MQ_U8))
    return MQ_ERR_DTYPE;
  if (m < 0 || n < 1 || k < 1) return MQ_ERR_SHAPE;
  mq_status st = check_packed(packed, packed_bytes, n, k);
  if (st != MQ_OK) return st;
  const int64_t kp = mq_linear_round_up(k, MQ_LINEAR_QK), nb = kp / MQ_LINEAR_QK;
  const int64_t tiles = tiles_of(n);
  const uint8_t *tile0 = (const uint8_t *)packed + sizeof(mq_linear_header);
  const int64_t tile_bytes = nb * MQ_LINEAR_INT8_BLOCK_BYTES + MQ_LINEAR_INT8_TILE_TAIL;
  const int64_t *qsum = (const int64_t *)(const void *)(tile0 + tiles * tile_bytes);
  float max_scale;
  memcpy(&max_scale, (const uint8_t *)packed + packed_bytes - MQ_LINEAR_STATIC_TAIL, sizeof max_scale);
  const int32_t off = x_qdtype == MQ_U8 ? 128 : 0;
  if (!(isfinite(x_scale) && x_scale > 0.0f) || x_zero_point - off < -128 || x_zero_point - off > 127 ||
      !isfinite(x_scale * max_scale)) /* x_scale * w_scale grows with w_scale: the largest decides */
    return MQ_ERR_ARG;

  /* one scratch allocation: quantized rows, their sums (int64, int32), a float32 bias */
  const int convert_bias = bias != NULL && bias_dtype != MQ_F32;
  const mq_linear_static_kernels *kern = active_kernels();
  const size_t off_sx = align64((size_t)(m * kp * kern->xs_size));
  const size_t off_sx32 = off_sx + align64(sizeof(int64_t) * (size_t)m);
  const size_t off_bias = off_sx32 + align64(sizeof(int32_t) * (size_t)m);
  const size_t total = off_bias + align64(convert_bias ? sizeof(float) * (size_t)n : 0);
  char *scratch = aligned_alloc(64, total);
  if (scratch == NULL) return MQ_ERR_NOMEM;
  const float *bias32 = bias;
  if (convert_bias) {
    float *b32 = (float *)(scratch + off_bias);
    for (int64_t i = 0; i < n; i++) b32[i] = mq_load_f32(bias, bias_dtype, i);
    bias32 = b32;
  }
  if (bias32 && !finite_f32(bias32, n)) {
    free(scratch);
    return MQ_ERR_ARG;
  }
  if (m == 0) {
    free(scratch);
    return MQ_OK;
  }

  act_job aj = {kern, x, x_dtype, k, kp, x_scale, x_zero_point - off, scratch,
                (int64_t *)(scratch + off_sx), 0};
  mq_parallel_for(m, MQ_LS_MIN_ACT_PER_THREAD / kp + 1, 1, num_threads, quantize_rows, &aj);
  if (atomic_load(&aj.nonfinite)) {
    free(scratch);
    return MQ_ERR_NONFINITE;
  }
  int32_t *sx32 = (int32_t *)(scratch + off_sx32);
  for (int64_t r = 0; r < m; r++) sx32[r] = (int32_t)(uint32_t)aj.sx[r];

  mq_linear_static_job job = {
      .tiles = tile0, .tile_bytes = tile_bytes, .n = n, .kp = kp, .nb = nb, .m = m,
      .xs = aj.xs, .q0 = 0, .q1 = kp / 4, .acc64 = NULL, .sx = sx32, .zs = aj.zs,
      .qsum = qsum, .x_scale = x_scale, .bias = bias32, .out = out, .out_dtype = x_dtype,
  };
  if (k <= MQ_LINEAR_STATIC_KC)
    run_job(&job, kern, num_threads);
  else
    st = run_long_rows(&job, kern, aj.sx, num_threads);
  free(scratch);
  return st;
}
