/* gptq.c : GPTQ's numerical core: the Hessian x^T x of a layer's inputs, and the column loop
 * that quantizes a weight to INT4 with error feedback (contracts in mono_quant.h; the torch
 * twin is mono_quant/_reference.py).  The inner loops live in gptq.h, compiled once per ISA
 * (this file: the portable table); cpu.c picks the table. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "gptq.h"
#include "mono_quant.h"
#include "threadpool.h"

MQ_GPTQ_DEFINE_KERNELS(mq_gptq_kernels_portable, "portable", 4);

/* Counted rows per Hessian chunk: the chunk's panels (256 x 8 doubles each) stay in L2
 * while every tile of h reads them, and each h element takes one addition per chunk. */
#define MQ_GPTQ_CHUNK 256
/* Below this many multiply-adds per thread, waking workers costs more than it saves. */
#define MQ_GPTQ_MIN_WORK_PER_THREAD (1 << 20)
/* See int4.c: rounds |x| < 2^22 to an integer, ties to even (values here are clamped to
 * [-15, 15] first). */
#define MQ_GPTQ_ROUND_MAGIC 12582912.0f

/* ---- Hessian ------------------------------------------------------------------------------ */
typedef struct {
  const mq_gptq_kernels *kern;
  const double *xp; /* panels: xp[(p * m + r) * 8 + t] = x[row r][8p + t], 0 past k */
  int64_t m, k, panels, itiles;
  double *h;
} hessian_job;

/* Rows i0..i0+rows-1 of h's upper triangle (j >= i) from the chunk's panels (rows: the
 * ISA's tile height, which divides the panel width). */
static void hessian_itile(const hessian_job *job, int64_t it) {
  const int rows = job->kern->hessian_rows;
  const int64_t k = job->k, m = job->m, i0 = it * rows;
  const int64_t p = i0 / MQ_GPTQ_PANEL;
  const double *a = job->xp + p * m * MQ_GPTQ_PANEL + (i0 % MQ_GPTQ_PANEL);
  for (int64_t q = p; q < job->panels; q++) {
    double acc[MQ_GPTQ_PANEL][8];
    job->kern->hessian_tile(a, job->xp + q * m * MQ_GPTQ_PANEL, m, acc);
    for (int s = 0; s < rows && i0 + s < k; s++) {
      const int64_t i = i0 + s;
      double *restrict hi = job->h + i * k;
      for (int t = 0; t < MQ_GPTQ_PANEL; t++) {
        const int64_t j = q * MQ_GPTQ_PANEL + t;
        if (j >= i && j < k) hi[j] += acc[s][t];
      }
    }
  }
}

/* Item t handles i-tiles t and itiles-1-t, so every item has the same amount of work. */
static void hessian_items(void *ctx, int64_t begin, int64_t end) {
  const hessian_job *job = ctx;
  for (int64_t t = begin; t < end; t++) {
    hessian_itile(job, t);
    if (job->itiles - 1 - t != t) hessian_itile(job, job->itiles - 1 - t);
  }
}

static int row_finite(const float *v, int64_t n) {
  unsigned bad = 0;
  for (int64_t i = 0; i < n; i++) bad |= (mq_f32_to_bits(v[i]) & 0x7f800000u) == 0x7f800000u;
  return !bad;
}

/* Scatter one float32 row into column r of the chunk's panels. */
static void to_panels(const float *row, int64_t k, int64_t panels, int64_t m, int64_t r, double *xp) {
  for (int64_t p = 0; p < panels; p++) {
    double *dst = xp + (p * m + r) * MQ_GPTQ_PANEL;
    for (int t = 0; t < MQ_GPTQ_PANEL; t++) {
      const int64_t j = p * MQ_GPTQ_PANEL + t;
      dst[t] = j < k ? (double)row[j] : 0.0;
    }
  }
}

mq_status mq_gptq_hessian_add(const void *x, mq_dtype x_dtype, int64_t rows, int64_t k,
                              const uint8_t *mask, double *h, int64_t *counted, int num_threads) {
  if (!mq_is_float_dtype(x_dtype)) return MQ_ERR_DTYPE;
  if (rows < 0 || k < 1) return MQ_ERR_SHAPE;
  const size_t elem = mq_dtype_size(x_dtype);
  const int64_t panels = (k + MQ_GPTQ_PANEL - 1) / MQ_GPTQ_PANEL;
  float *row = malloc((size_t)k * sizeof(float));
  double *xp = malloc((size_t)(panels * MQ_GPTQ_CHUNK * MQ_GPTQ_PANEL) * sizeof(double));
  if (row == NULL || xp == NULL) {
    free(row);
    free(xp);
    return MQ_ERR_NOMEM;
  }
  /* Every counted row is checked before h is touched, so a failed call leaves h as it was. */
  mq_status st = MQ_OK;
  int64_t total = 0;
  for (int64_t r = 0; r < rows && st == MQ_OK; r++) {
    if (mask != NULL && mask[r] == 0) continue;
    mq_row_to_f32((const char *)x + (size_t)(r * k) * elem, x_dtype, k, row);
    if (!row_finite(row, k)) st = MQ_ERR_NONFINITE;
    total++;
  }
  const mq_gptq_kernels *kern = mq_gptq_active();
  const int64_t tile_rows = kern->hessian_rows;
  hessian_job job = {kern, xp, 0, k, panels, (k + tile_rows - 1) / tile_rows, h};
  int64_t idx[MQ_GPTQ_CHUNK];
  for (int64_t r = 0; r < rows && st == MQ_OK;) {
    int64_t m = 0; /* the next chunk of counted rows, in order */
    for (; r < rows && m < MQ_GPTQ_CHUNK; r++)
      if (mask == NULL || mask[r] != 0) idx[m++] = r;
    if (m == 0) break;
    for (int64_t q = 0; q < m; q++) {
      mq_row_to_f32((const char *)x + (size_t)(idx[q] * k) * elem, x_dtype, k, row);
      to_panels(row, k, panels, m, q, xp);
    }
    job.m = m;
    const int64_t items = (job.itiles + 1) / 2;
    const int64_t per_item = m * tile_rows * k;
    const int64_t min_items = MQ_GPTQ_MIN_WORK_PER_THREAD / (per_item > 0 ? per_item : 1);
    mq_parallel_for(items, min_items > 0 ? min_items : 1, 1, num_threads, hessian_items, &job);
  }
  free(row);
  free(xp);
  if (st == MQ_OK && counted != NULL) *counted = total;
  return st;
}

/* ---- the GPTQ column loop ----------------------------------------------------------------- */
typedef struct {
  const mq_gptq_kernels *kern;
  const float *w, *v;
  const int64_t *perm;
  const uint16_t *scale;
  const uint8_t *zero_point;
  int64_t k, group_size, block;
  uint8_t *qweight;
  atomic_int nomem;
} gptq_job;

static inline float clamp_round(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  v = v > hi ? hi : v;
  return (v + MQ_GPTQ_ROUND_MAGIC) - MQ_GPTQ_ROUND_MAGIC;
}

/* Rows [r0, r0 + rows) through every column.  Scratch, rows x k each: spos / zpos, each row's
 * scale and zero point per processing position, and acc, the feedback sums; d: the block's
 * errors, rows x block. */
static void gptq_tile(const gptq_job *job, int64_t r0, int rows, float *spos, float *zpos, float *acc,
                      float *d) {
  const int64_t k = job->k, g = job->group_size, groups = k / g, block = job->block;
  const float *v = job->v;
  for (int r = 0; r < rows; r++) {
    for (int64_t i = 0; i < k; i++) {
      const int64_t c = job->perm != NULL ? job->perm[i] : i, j = (r0 + r) * groups + c / g;
      spos[r * k + i] = mq_f16_to_f32(job->scale[j]);
      zpos[r * k + i] = (float)job->zero_point[j];
    }
    memset(acc + r * k, 0, (size_t)k * sizeof(float));
    memset(job->qweight + (r0 + r) * (k / 2), 0, (size_t)(k / 2));
  }
  for (int64_t i1 = 0; i1 < k; i1 += block) {
    const int64_t i2 = i1 + block < k ? i1 + block : k;
    for (int64_t i = i1; i < i2; i++) {
      const float *restrict vi = v + i * k;
      const int64_t c = job->perm != NULL ? job->perm[i] : i;
      for (int r = 0; r < rows; r++) {
        const float *restrict wr = job->w + (r0 + r) * k;
        float *restrict ar = acc + r * k;
        const float s = spos[r * k + i], z = zpos[r * k + i];
        const float target = wr[i] + ar[i] / vi[i];
        const float level = clamp_round(target / s, -z, 15.0f - z);
        const float err = wr[i] - level * s;
        d[r * block + (i - i1)] = err;
        uint8_t *q = job->qweight + (r0 + r) * (k / 2) + c / 2;
        *q = (uint8_t)(*q | ((unsigned)(level + z) << (4 * (c & 1))));
        for (int64_t j = i + 1; j < i2; j++) ar[j] = ar[j] + err * vi[j];
      }
    }
    if (i2 < k) job->kern->lazy_update(acc, k, rows, d, block, v + i1 * k, k, i2 - i1, i2, k);
  }
}

static void gptq_rows(void *ctx, int64_t begin, int64_t end) {
  gptq_job *job = ctx;
  const size_t tile = (size_t)(MQ_GPTQ_ROWS * job->k) * sizeof(float);
  float *spos = malloc(tile), *zpos = malloc(tile), *acc = malloc(tile);
  float *d = malloc((size_t)(MQ_GPTQ_ROWS * job->block) * sizeof(float));
  if (spos == NULL || zpos == NULL || acc == NULL || d == NULL) {
    atomic_store(&job->nomem, 1);
  } else {
    for (int64_t r = begin; r < end; r += MQ_GPTQ_ROWS) {
      const int rows = (int)(end - r < MQ_GPTQ_ROWS ? end - r : MQ_GPTQ_ROWS);
      gptq_tile(job, r, rows, spos, zpos, acc, d);
    }
  }
  free(spos);
  free(zpos);
  free(acc);
  free(d);
}

/* The checks of the contract, before anything is written. */
static mq_status gptq_check(const float *w, const float *v, const int64_t *perm,
                            const uint16_t *scale, const uint8_t *zero_point, int64_t n, int64_t k,
                            int64_t group_size) {
  for (int64_t i = 0; i < n * (k / group_size); i++) {
    const float s = mq_f16_to_f32(scale[i]);
    if (!(isfinite(s) && s > 0.0f) || zero_point[i] > 15) return MQ_ERR_ARG;
  }
  if (!row_finite(w, n * k)) return MQ_ERR_NONFINITE;
  for (int64_t i = 0; i < k; i++) {
    if (!row_finite(v + i * k + i, k - i)) return MQ_ERR_NONFINITE;
    if (!(v[i * k + i] > 0.0f)) return MQ_ERR_ARG;
  }
  if (perm == NULL) return MQ_OK;
  uint8_t *seen = calloc((size_t)k, 1);
  if (seen == NULL) return MQ_ERR_NOMEM;
  mq_status st = MQ_OK;
  for (int64_t i = 0; i < k && st == MQ_OK; i++) {
    if (perm[i] < 0 || perm[i] >= k || seen[perm[i]]) st = MQ_ERR_ARG;
    else seen[perm[i]] = 1;
  }
  free(seen);
  return st;
}

mq_status mq_gptq_int4(const float *w, const float *v, const int64_t *perm, const uint16_t *scale,
                       const uint8_t *zero_point, int64_t n, int64_t k, int64_t group_size,
                       int64_t block_size, uint8_t *qweight, int num_threads) {
  if (group_size != 32 && group_size != 64 && group_size != 128 && group_size != 256)
    return MQ_ERR_ARG;
  if (block_size < 1) return MQ_ERR_ARG;
  if (n < 0 || k < 1 || k % group_size != 0) return MQ_ERR_SHAPE;
  mq_status st = gptq_check(w, v, perm, scale, zero_point, n, k, group_size);
  if (st != MQ_OK) return st;
  gptq_job job = {mq_gptq_active(), w, v, perm, scale, zero_point, k, group_size, block_size,
                  qweight, 0};
  /* a row costs about k^2 multiply-adds */
  const int64_t min_rows = MQ_GPTQ_MIN_WORK_PER_THREAD / (k * k) + 1;
  mq_parallel_for(n, min_rows, MQ_GPTQ_ROWS, num_threads, gptq_rows, &job);
  return atomic_load(&job.nomem) ? MQ_ERR_NOMEM : MQ_OK;
}
