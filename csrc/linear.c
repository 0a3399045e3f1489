/*
 * linear.c : the quantized Linear's portable plumbing: packed sizes, repacking canonical INT8 /
 * INT4 weights into the tile layouts of linear.h, and the forward driver (argument checks,
 * scratch, activation quantization, threads).  The arithmetic lives in linear_<isa>.c and is
 * picked at run time through mq_linear_active() (cpu.c).
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "linear.h"
#include "threadpool.h"

/* Below this many multiply-adds per thread, waking a worker costs more than it saves. */
#define MQ_LINEAR_MIN_MACS_PER_THREAD (1 << 18)
/* Activation rows are quantized in parallel only when there are many of them. */
#define MQ_LINEAR_MIN_ACT_PER_THREAD (1 << 15)
/* Tiles are handed out in about this many chunks per thread (see run_tiles). */
#define MQ_LINEAR_CHUNKS_PER_THREAD 8

/* ---- sizes -------------------------------------------------------------------------------- */

static int64_t int8_tile_bytes(int64_t kp) {
  return kp / MQ_LINEAR_QK * MQ_LINEAR_INT8_BLOCK_BYTES + MQ_LINEAR_INT8_TILE_TAIL;
}

static int64_t int4_tile_bytes(int64_t k, int64_t g) {
  return k / g * (MQ_LINEAR_INT4_GROUP_HEADER + g / MQ_LINEAR_QK * MQ_LINEAR_INT4_BLOCK_BYTES);
}

static int64_t tiles_of(int64_t n) { return (n + MQ_LINEAR_NR - 1) / MQ_LINEAR_NR; }

static int valid_group(int64_t g) { return g == 32 || g == 64 || g == 128 || g == 256; }

/* Sizes beyond this are refused so that every byte count below fits int64 comfortably. */
#define MQ_LINEAR_MAX_DIM ((int64_t)1 << 31)

mq_status mq_linear_int8_packed_size(int64_t n, int64_t k, int64_t *bytes) {
  if (n < 1 || k < 1 || n > MQ_LINEAR_MAX_DIM || k > MQ_LINEAR_MAX_DIM) return MQ_ERR_SHAPE;
  *bytes = (int64_t)sizeof(mq_linear_header) +
           tiles_of(n) * int8_tile_bytes(mq_linear_round_up(k, MQ_LINEAR_QK));
  return MQ_OK;
}

mq_status mq_linear_int4_packed_size(int64_t n, int64_t k, int64_t group_size, int64_t *bytes) {
  if (!valid_group(group_size)) return MQ_ERR_ARG;
  if (n < 1 || k < 1 || n > MQ_LINEAR_MAX_DIM || k > MQ_LINEAR_MAX_DIM || k % group_size != 0)
    return MQ_ERR_SHAPE;
  *bytes = (int64_t)sizeof(mq_linear_header) + tiles_of(n) * int4_tile_bytes(k, group_size);
  return MQ_OK;
}

static void write_header(void *packed, const char *magic, int64_t n, int64_t k, int64_t kp,
                         int64_t g, int64_t tile_bytes) {
  mq_linear_header h;
  memset(&h, 0, sizeof h);
  memcpy(h.magic, magic, sizeof h.magic);
  h.version = MQ_LINEAR_VERSION;
  h.group_size = (int32_t)g;
  h.n = n;
  h.k = k;
  h.kp = kp;
  h.tiles = tiles_of(n);
  h.tile_bytes = tile_bytes;
  memcpy(packed, &h, sizeof h);
}

/* ---- INT8 pack ---------------------------------------------------------------------------- */

typedef struct {
  const void *q;
  int is_u8;
  const float *scale;
  const int32_t *zero_point;
  int64_t n, k, kp, tile_bytes;
  uint8_t *tiles;
} int8_pack_job;

static void int8_pack_tiles(void *ctx, int64_t t0, int64_t t1) {
  const int8_pack_job *job = ctx;
  const int64_t nb = job->kp / MQ_LINEAR_QK;
  for (int64_t t = t0; t < t1; t++) {
    uint8_t *dst = job->tiles + t * job->tile_bytes;
    for (int r = 0; r < MQ_LINEAR_NR; r++) {
      const int64_t row = t * MQ_LINEAR_NR + r;
      const int valid = row < job->n;
      for (int64_t col = 0; col < job->kp; col++) {
        /* wu = q - center + 128: the int8 bit pattern flipped, or the uint8 value as is */
        uint8_t wu = 128;
        if (valid && col < job->k) {
          const int64_t i = row * job->k + col;
          wu = job->is_u8 ? ((const uint8_t *)job->q)[i]
                          : (uint8_t)(((const uint8_t *)job->q)[i] ^ 0x80u);
        }
        const int64_t b = col / MQ_LINEAR_QK, c = (col % MQ_LINEAR_QK) / 4, j = col % 4;
        dst[b * MQ_LINEAR_INT8_BLOCK_BYTES + c * 64 + r * 4 + j] = wu;
      }
    }
    mq_linear_int8_tile_tail tail;
    for (int r = 0; r < MQ_LINEAR_NR; r++) {
      const int64_t row = t * MQ_LINEAR_NR + r;
      tail.scale[r] = row < job->n ? job->scale[row] : 0.0f;
      tail.zero[r] = row < job->n ? job->zero_point[row] - (job->is_u8 ? 128 : 0) : 0;
    }
    memcpy(dst + nb * MQ_LINEAR_INT8_BLOCK_BYTES, &tail, sizeof tail);
  }
}

mq_status mq_linear_int8_pack(const void *qweight, mq_dtype q_dtype, const float *scale,
                              const int32_t *zero_point, int64_t n, int64_t k, void *packed,
                              int64_t packed_bytes, int num_threads) {
  if (q_dtype != MQ_I8 && q_dtype != MQ_U8) return MQ_ERR_DTYPE;
  int64_t bytes;
  mq_status st = mq_linear_int8_packed_size(n, k, &bytes);
  if (st != MQ_OK) return st;
  if (packed_bytes != bytes) return MQ_ERR_SHAPE;
  const int32_t zlo = q_dtype == MQ_I8 ? -128 : 0, zhi = q_dtype == MQ_I8 ? 127 : 255;
  for (int64_t i = 0; i < n; i++) {
    if (!(isfinite(scale[i]) && scale[i] > 0.0f)) return MQ_ERR_ARG;
    if (zero_point[i] < zlo || zero_point[i] > zhi) return MQ_ERR_ARG;
  }
  const int64_t kp = mq_linear_round_up(k, MQ_LINEAR_QK);
  const int64_t tile_bytes = int8_tile_bytes(kp);
  write_header(packed, MQ_LINEAR_MAGIC_INT8, n, k, kp, 0, tile_bytes);
  int8_pack_job job = {qweight, q_dtype == MQ_U8, scale, zero_point, n, k, kp, tile_bytes,
                       (uint8_t *)packed + sizeof(mq_linear_header)};
  mq_parallel_for(tiles_of(n), 4, 1, num_threads, int8_pack_tiles, &job);
  return MQ_OK;
}

/* ---- INT4 pack ---------------------------------------------------------------------------- */

typedef struct {
  const uint8_t *q;
  const uint16_t *scale;
  const uint8_t *zero_point;
  int64_t n, k, g, tile_bytes;
  uint8_t *tiles;
} int4_pack_job;

static uint8_t nibble_at(const int4_pack_job *job, int64_t row, int64_t col) {
  if (row >= job->n) return 0;
  const uint8_t byte = job->q[row * (job->k / 2) + col / 2];
  return (col & 1) ? (uint8_t)(byte >> 4) : (uint8_t)(byte & 15u);
}

static void int4_pack_tiles(void *ctx, int64_t t0, int64_t t1) {
  const int4_pack_job *job = ctx;
  const int64_t ng = job->k / job->g, bpg = job->g / MQ_LINEAR_QK;
  for (int64_t t = t0; t < t1; t++) {
    uint8_t *dst = job->tiles + t * job->tile_bytes;
    for (int64_t grp = 0; grp < ng; grp++) {
      mq_linear_int4_group_header h;
      memset(&h, 0, sizeof h);
      for (int r = 0; r < MQ_LINEAR_NR; r++) {
        const int64_t row = t * MQ_LINEAR_NR + r;
        if (row < job->n) {
          h.scale[r] = job->scale[row * ng + grp];
          h.zero[r] = job->zero_point[row * ng + grp];
        }
      }
      memcpy(dst, &h, sizeof h);
      dst += sizeof h;
      for (int64_t bb = 0; bb < bpg; bb++) {
        const int64_t col0 = grp * job->g + bb * MQ_LINEAR_QK;
        for (int c = 0; c < 4; c++)
          for (int r = 0; r < MQ_LINEAR_NR; r++)
            for (int j = 0; j < 4; j++) {
              const int64_t row = t * MQ_LINEAR_NR + r;
              const uint8_t lo = nibble_at(job, row, col0 + 4 * c + j);
              const uint8_t hi = nibble_at(job, row, col0 + 16 + 4 * c + j);
              dst[c * 64 + r * 4 + j] = (uint8_t)(lo | (hi << 4));
            }
        dst += MQ_LINEAR_INT4_BLOCK_BYTES;
      }
    }
  }
}

mq_status mq_linear_int4_pack(const uint8_t *qweight, const uint16_t *scale,
                              const uint8_t *zero_point, int64_t n, int64_t k, int64_t group_size,
                              void *packed, int64_t packed_bytes, int num_threads) {
  int64_t bytes;
  mq_status st = mq_linear_int4_packed_size(n, k, group_size, &bytes);
  if (st != MQ_OK) return st;
  if (packed_bytes != bytes) return MQ_ERR_SHAPE;
  const int64_t count = n * (k / group_size);
  for (int64_t i = 0; i < count; i++) {
    const float s = mq_f16_to_f32(scale[i]);
    if (!(isfinite(s) && s > 0.0f) || zero_point[i] > 15) return MQ_ERR_ARG;
  }
  const int64_t tile_bytes = int4_tile_bytes(k, group_size);
  write_header(packed, MQ_LINEAR_MAGIC_INT4, n, k, k, group_size, tile_bytes);
  int4_pack_job job = {qweight, scale, zero_point, n, k, group_size, tile_bytes,
                       (uint8_t *)packed + sizeof(mq_linear_header)};
  mq_parallel_for(tiles_of(n), 4, 1, num_threads, int4_pack_tiles, &job);
  return MQ_OK;
}

/* ---- forward driver ----------------------------------------------------------------------- */

static mq_status check_header(const void *packed, int64_t packed_bytes, const char *magic,
                              int64_t n, int64_t k, int64_t g) {
  mq_linear_header h;
  if (packed == NULL || packed_bytes < (int64_t)sizeof h) return MQ_ERR_LAYOUT;
  memcpy(&h, packed, sizeof h);
  if (memcmp(h.magic, magic, sizeof h.magic) != 0 || h.version != MQ_LINEAR_VERSION ||
      h.n != n || h.k != k || h.group_size != g)
    return MQ_ERR_LAYOUT;
  int64_t bytes;
  mq_status st = g ? mq_linear_int4_packed_size(n, k, g, &bytes) : mq_linear_int8_packed_size(n, k, &bytes);
  if (st != MQ_OK || bytes != packed_bytes) return MQ_ERR_LAYOUT;
  return MQ_OK;
}

typedef struct {
  const mq_linear_kernels *kern;
  const void *x;
  mq_dtype x_dtype;
  int64_t k, kp, nb;
  int8_t *xq;
  float *d;
  int32_t *asum;
  atomic_int nonfinite;
} act_job;

static void quantize_rows(void *ctx, int64_t r0, int64_t r1) {
  act_job *job = ctx;
  const size_t esize = mq_dtype_size(job->x_dtype);
  for (int64_t r = r0; r < r1; r++) {
    const void *row = (const char *)job->x + (size_t)(r * job->k) * esize;
    if (!job->kern->quantize_row(row, job->x_dtype, job->k, job->kp, job->xq + r * job->kp,
                                 job->d + r * job->nb, job->asum + r * job->nb)) {
      atomic_store(&job->nonfinite, 1);
      return;
    }
  }
}

/* The tiles of one job, as an mq_range_fn for mq_parallel_chunks (a preempted thread holds up
 * one chunk of tiles; each tile is computed whole by one thread: same result). */
typedef struct {
  const mq_linear_job *job;
  void (*tiles)(const mq_linear_job *job, int64_t t0, int64_t t1);
} tiles_ctx;

static void run_tiles(void *ctx, int64_t t0, int64_t t1) {
  const tiles_ctx *c = ctx;
  c->tiles(c->job, t0, t1);
}

static size_t align64(size_t v) { return (v + 63) & ~(size_t)63; }

/* Whether a call with m batch rows runs the path's batch (GEMM) kernels. */
static int use_batch(const mq_linear_kernels *kern, int64_t m) {
  return kern->int8_batch != NULL && m >= mq_linear_gemm_min_batch(kern);
}

int64_t mq_linear_tile_chunk(int64_t tiles, int64_t macs_per_tile, int64_t m, int num_threads, int *parts) {
  const int64_t min_tiles = MQ_LINEAR_MIN_MACS_PER_THREAD / macs_per_tile + 1;
  *parts = mq_parallel_parts(tiles, min_tiles, 1, num_threads);
  int64_t chunk = tiles / ((int64_t)*parts * MQ_LINEAR_CHUNKS_PER_THREAD);
  if (chunk < min_tiles / 2 + 1) chunk = min_tiles / 2 + 1;
  /* batch passes take two tiles at a time within a chunk (each weight load feeds more
   * rows, each activation broadcast two tiles): an odd chunk leaves single-tile passes,
   * and chunks of one tile (MiniLM's 384-wide layers) had no pairs at all */
  if (m > 1) chunk += chunk & 1;
  return chunk;
}

/* Run every tile of `job` on up to num_threads threads. */
static void run_job(const mq_linear_job *job, const mq_linear_kernels *kern, int num_threads) {
  const int64_t tiles = tiles_of(job->n);
  int parts;
  const int64_t chunk = mq_linear_tile_chunk(tiles, MQ_LINEAR_NR * job->kp * job->m, job->m, num_threads, &parts);
  void (*fn)(const mq_linear_job *, int64_t, int64_t) = job->group ? kern->int4_tiles : kern->int8_tiles;
  /* job->xu is checked too: the threshold hook may move between the driver's two looks */
  if (use_batch(kern, job->m) && (job->xu != NULL || !kern->needs_xu))
    fn = job->group ? kern->int4_batch : kern->int8_batch;
  tiles_ctx tc = {job, fn};
  mq_parallel_chunks(tiles, chunk, parts, run_tiles, &tc);
}

/* ---- rows too large for float32 sums ---------------------------------------------------- */

/* The power of two e (0 for ordinary rows) by which a row's block scales are divided so that
 * nb * max_b d[b] <= MQ_LINEAR_SHIFT_LIMIT (linear.h).  nb * dmax is exact in double, and
 * the max does not depend on order, so the torch twin picks the same e. */
static int row_shift(const float *d, int64_t nb) {
  float dmax = 0.0f;
  for (int64_t b = 0; b < nb; b++) dmax = d[b] > dmax ? d[b] : dmax;
  const double bound = (double)nb * (double)dmax;
  if (bound <= MQ_LINEAR_SHIFT_LIMIT) return 0;
  int e;
  (void)frexp(bound, &e); /* bound < 2^e */
  return e - MQ_LINEAR_SHIFT_LIMIT_LOG2;
}

/* The rows with shift[r] > 0, in runs of consecutive rows: each run is computed without the
 * bias into float32, then y * 2^shift + bias is stored in out_dtype (linear.h). */
static mq_status run_shifted_rows(const mq_linear_job *job, const int32_t *shift, int64_t count,
                                  const mq_linear_kernels *kern, int num_threads) {
  const int64_t n = job->n, nb = job->nb, per_row_corr = job->group ? job->ng : 1;
  float *tmp = malloc(sizeof(float) * (size_t)count * (size_t)n);
  if (tmp == NULL) return MQ_ERR_NOMEM;
  for (int64_t r0 = 0; r0 < job->m;) {
    if (!shift[r0]) {
      r0++;
      continue;
    }
    int64_t r1 = r0 + 1;
    while (r1 < job->m && shift[r1]) r1++;
    mq_linear_job sub = *job;
    sub.m = r1 - r0;
    sub.xq = job->xq + r0 * job->kp;
    sub.xu = job->xu ? job->xu + r0 * job->kp : NULL;
    sub.d = job->d + r0 * nb;
    sub.acc_start = job->acc_start + r0 * nb;
    sub.corr = job->corr + r0 * per_row_corr;
    sub.bias = NULL;
    sub.out = tmp;
    sub.out_dtype = MQ_F32;
    run_job(&sub, kern, num_threads);
    for (int64_t r = r0; r < r1; r++) {
      const float up = ldexpf(1.0f, shift[r]);
      const float *y = tmp + (r - r0) * n;
      for (int64_t j = 0; j < n; j++) {
        float v = y[j] * up; /* exact unless beyond float32: then inf, as the true result */
        if (job->bias) v = v + job->bias[j];
        mq_store_f32(job->out, job->out_dtype, r * n + j, v);
      }
    }
    r0 = r1;
  }
  free(tmp);
  return MQ_OK;
}

/* g == 0: INT8; else INT4 with group size g. */
static mq_status forward(const void *x, mq_dtype x_dtype, int64_t m, const void *packed,
                         int64_t packed_bytes, int64_t n, int64_t k, int64_t g, const void *bias,
                         mq_dtype bias_dtype, void *out, int num_threads) {
  if (!mq_is_float_dtype(x_dtype) || (bias != NULL && !mq_is_float_dtype(bias_dtype)))
    return MQ_ERR_DTYPE;
  if (m < 0 || n < 1 || k < 1) return MQ_ERR_SHAPE;
  mq_status st = check_header(packed, packed_bytes, g ? MQ_LINEAR_MAGIC_INT4 : MQ_LINEAR_MAGIC_INT8, n, k, g);
  if (st != MQ_OK) return st;
  if (m == 0) return MQ_OK;

  const mq_linear_kernels *kern = mq_linear_active();
  const int64_t kp = mq_linear_round_up(k, MQ_LINEAR_QK), nb = kp / MQ_LINEAR_QK;
  const int64_t ng = g ? k / g : 1, bpg = g ? g / MQ_LINEAR_QK : nb;
  const int need_bias = bias != NULL && bias_dtype != MQ_F32;

  /* one scratch allocation per call: quantized activations, their scales, sums, corrections */
  const size_t off_d = align64((size_t)(m * kp));
  const size_t off_asum = off_d + align64(sizeof(float) * (size_t)(m * nb));
  const size_t off_corr = off_asum + align64(sizeof(int32_t) * (size_t)(m * nb));
  const size_t off_shift = off_corr + align64(sizeof(float) * (size_t)(m * ng));
  const size_t off_bias = off_shift + align64(sizeof(int32_t) * (size_t)m);
  /* batch kernels that take unsigned activations (AMX): xq ^ 0x80, then 15 zero rows, so a
   * 16-row block starting at any row < m (also of a sub-job below) stays inside */
  const int need_xu = kern->needs_xu && use_batch(kern, m);
  const int64_t mpad = m + 15;
  const size_t off_xu = off_bias + align64(need_bias ? sizeof(float) * (size_t)n : 0);
  const size_t total = off_xu + (need_xu ? align64((size_t)(mpad * kp)) : 0);
  char *scratch = aligned_alloc(64, total);
  if (scratch == NULL) return MQ_ERR_NOMEM;

  act_job aj = {kern, x, x_dtype, k, kp, nb, (int8_t *)scratch, (float *)(scratch + off_d),
                (int32_t *)(scratch + off_asum), 0};
  mq_parallel_for(m, MQ_LINEAR_MIN_ACT_PER_THREAD / kp + 1, 1, num_threads, quantize_rows, &aj);
  if (atomic_load(&aj.nonfinite)) {
    free(scratch);
    return MQ_ERR_NONFINITE;
  }

  /* A row too large for float32 sums gets its block scales divided by 2^shift (exact, see
   * linear.h); then S (INT8, one group spanning all blocks) or D[j] (INT4): sum of
   * d[b] * asum[b], in order */
  float *corr = (float *)(scratch + off_corr);
  int32_t *shift = (int32_t *)(scratch + off_shift);
  int64_t shifted = 0;
  for (int64_t r = 0; r < m; r++) {
    float *dr = aj.d + r * nb;
    shift[r] = row_shift(dr, nb);
    if (shift[r]) {
      const float down = ldexpf(1.0f, -shift[r]);
      for (int64_t b = 0; b < nb; b++) dr[b] = dr[b] * down;
      shifted++;
    }
    for (int64_t j = 0; j < ng; j++) {
      float s = 0.0f;
      for (int64_t b = j * bpg; b < (j + 1) * bpg; b++) {
        const float term = aj.d[r * nb + b] * (float)aj.asum[r * nb + b];
        s = s + term;
      }
      corr[r * ng + j] = s;
    }
  }

  /* the VNNI path multiplies w + 128: its block sums start at -128 * asum to stay exact */
  for (int64_t i = 0; i < m * nb; i++) aj.asum[i] *= -128;

  const float *bias_f32 = bias;
  if (need_bias) {
    float *b32 = (float *)(scratch + off_bias);
    for (int64_t i = 0; i < n; i++) b32[i] = mq_load_f32(bias, bias_dtype, i);
    bias_f32 = b32;
  }

  uint8_t *xu = NULL;
  if (need_xu) {
    xu = (uint8_t *)(scratch + off_xu);
    const uint8_t *src = (const uint8_t *)aj.xq;
    for (int64_t i = 0; i < m * kp; i++) xu[i] = (uint8_t)(src[i] ^ 0x80u);
    memset(xu + m * kp, 0, (size_t)((mpad - m) * kp));
  }

  const mq_linear_job job = {
      .tiles = (const uint8_t *)packed + sizeof(mq_linear_header),
      .tile_bytes = g ? int4_tile_bytes(k, g) : int8_tile_bytes(kp),
      .n = n, .k = k, .kp = kp, .nb = nb, .group = g, .ng = g ? ng : 0, .m = m,
      .xq = aj.xq, .xu = xu, .d = aj.d, .acc_start = aj.asum, .corr = corr, .bias = bias_f32,
      .out = out, .out_dtype = x_dtype,
  };
  if (shifted < m) run_job(&job, kern, num_threads); /* shifted rows are overwritten below */
  if (shifted) st = run_shifted_rows(&job, shift, shifted, kern, num_threads);
  free(scratch);
  return st;
}

mq_status mq_linear_int8(const void *x, mq_dtype x_dtype, int64_t m, const void *packed,
                         int64_t packed_bytes, int64_t n, int64_t k, const void *bias,
                         mq_dtype bias_dtype, void *out, int num_threads) {
  return forward(x, x_dtype, m, packed, packed_bytes, n, k, 0, bias, bias_dtype, out, num_threads);
}

mq_status mq_linear_int4(const void *x, mq_dtype x_dtype, int64_t m, const void *packed,
                         int64_t packed_bytes, int64_t n, int64_t k, int64_t group_size,
                         const void *bias, mq_dtype bias_dtype, void *out, int num_threads) {
  if (!valid_group(group_size)) return MQ_ERR_ARG;
  return forward(x, x_dtype, m, packed, packed_bytes, n, k, group_size, bias, bias_dtype, out,
                 num_threads);
}
