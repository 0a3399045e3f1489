/*
 * linear_portable.c : the quantized Linear forward in plain C, for any CPU.  It defines the
 * arithmetic the SIMD paths (linear_avx2.c, linear_avx512.c) reproduce; see linear.h for the
 * packed layouts and the formulas.  Float math without fused multiply-adds.
 */
#include <math.h>

#include "linear.h"

/* Quantize one activation row into blocks of 32 (formulas in linear.h). */
static int quantize_row_portable(const void *x, mq_dtype dtype, int64_t k, int64_t kp, int8_t *xq,
                                 float *d, int32_t *asum) {
  float buf[MQ_LINEAR_QK];
  for (int64_t b = 0; b < kp / MQ_LINEAR_QK; b++) {
    const int64_t i0 = b * MQ_LINEAR_QK;
    const int64_t len = k - i0 < MQ_LINEAR_QK ? k - i0 : MQ_LINEAR_QK;
    uint32_t amax_bits = 0; /* max |x| as bits: the order of non-negative floats; Inf/NaN top */
    for (int64_t i = 0; i < MQ_LINEAR_QK; i++) {
      buf[i] = i < len ? mq_load_f32(x, dtype, i0 + i) : 0.0f;
      const uint32_t bits = mq_f32_to_bits(buf[i]) & 0x7fffffffu;
      if (bits > amax_bits) amax_bits = bits;
    }
    if (amax_bits >= 0x7f800000u) return 0;
    const float db = mq_bits_to_f32(amax_bits) / 127.0f;
    int32_t s = 0;
    for (int64_t i = 0; i < MQ_LINEAR_QK; i++) {
      float q = db > 0.0f ? nearbyintf(buf[i] / db) : 0.0f;
      q = fminf(fmaxf(q, -127.0f), 127.0f);
      xq[i0 + i] = (int8_t)q;
      s += (int32_t)q;
    }
    d[b] = db;
    asum[b] = s;
  }
  return 1;
}

static void int8_tiles_portable(const mq_linear_job *job, int64_t t0, int64_t t1) {
  const int64_t nb = job->nb;
  for (int64_t t = t0; t < t1; t++) {
    const uint8_t *tile = job->tiles + t * job->tile_bytes;
    mq_linear_int8_tile_tail tail;
    memcpy(&tail, tile + nb * MQ_LINEAR_INT8_BLOCK_BYTES, sizeof tail);
    const int64_t n0 = t * MQ_LINEAR_NR, rows = mq_linear_tile_rows(job, t);
    for (int64_t m = 0; m < job->m; m++) {
      const int8_t *xq = job->xq + m * job->kp;
      const float *d = job->d + m * nb;
      float facc[MQ_LINEAR_NR] = {0};
      for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = tile + b * MQ_LINEAR_INT8_BLOCK_BYTES;
        const int8_t *a = xq + b * MQ_LINEAR_QK;
        int32_t acc[MQ_LINEAR_NR] = {0};
        for (int c = 0; c < 8; c++)
          for (int r = 0; r < MQ_LINEAR_NR; r++)
            for (int j = 0; j < 4; j++)
              acc[r] += ((int32_t)w[c * 64 + r * 4 + j] - 128) * (int32_t)a[c * 4 + j];
        for (int r = 0; r < MQ_LINEAR_NR; r++) {
          const float term = d[b] * (float)acc[r];
          facc[r] = facc[r] + term;
        }
      }
      const float S = job->corr[m];
      float y[MQ_LINEAR_NR];
      for (int r = 0; r < rows; r++) {
        const float zs = (float)tail.zero[r] * S;
        y[r] = tail.scale[r] * (facc[r] - zs);
        if (job->bias) y[r] = y[r] + job->bias[n0 + r];
      }
      mq_linear_store_rows(job, m, n0, y, rows);
    }
  }
}

static void int4_tiles_portable(const mq_linear_job *job, int64_t t0, int64_t t1) {
  const int64_t nb = job->nb, bpg = job->group / MQ_LINEAR_QK;
  for (int64_t t = t0; t < t1; t++) {
    const uint8_t *tile = job->tiles + t * job->tile_bytes;
    const int64_t n0 = t * MQ_LINEAR_NR, rows = mq_linear_tile_rows(job, t);
    for (int64_t m = 0; m < job->m; m++) {
      const int8_t *xq = job->xq + m * job->kp;
      const float *d = job->d + m * nb;
      const float *D = job->corr + m * job->ng;
      const uint8_t *p = tile;
      float facc[MQ_LINEAR_NR] = {0};
      for (int64_t grp = 0; grp < job->ng; grp++) {
        mq_linear_int4_group_header h;
        memcpy(&h, p, sizeof h);
        p += sizeof h;
        float gacc[MQ_LINEAR_NR] = {0};
        for (int64_t bb = 0; bb < bpg; bb++, p += MQ_LINEAR_INT4_BLOCK_BYTES) {
          const int64_t b = grp * bpg + bb;
          const int8_t *a = xq + b * MQ_LINEAR_QK;
          int32_t acc[MQ_LINEAR_NR] = {0};
          for (int c = 0; c < 4; c++)
            for (int r = 0; r < MQ_LINEAR_NR; r++)
              for (int j = 0; j < 4; j++) {
                const uint8_t byte = p[c * 64 + r * 4 + j];
                acc[r] += (int32_t)(byte & 15u) * a[c * 4 + j] + (int32_t)(byte >> 4) * a[16 + c * 4 + j];
              }
          for (int r = 0; r < MQ_LINEAR_NR; r++) {
            const float term = d[b] * (float)acc[r];
            gacc[r] = gacc[r] + term;
          }
        }
        for (int r = 0; r < MQ_LINEAR_NR; r++) {
          const float zd = (float)h.zero[r] * D[grp];
          const float term = mq_f16_to_f32(h.scale[r]) * (gacc[r] - zd);
          facc[r] = facc[r] + term;
        }
      }
      float y[MQ_LINEAR_NR];
      for (int r = 0; r < rows; r++) y[r] = job->bias ? facc[r] + job->bias[n0 + r] : facc[r];
      mq_linear_store_rows(job, m, n0, y, rows);
    }
  }
}

static int64_t dot_u8s8_portable(const uint8_t *xu, const int8_t *ws, int64_t len) {
  int32_t acc = 0; /* exact: len <= MQ_LINEAR_STATIC_BLOCK */
  for (int64_t i = 0; i < len; i++) acc += (int32_t)xu[i] * (int32_t)ws[i];
  return acc;
}

const mq_linear_kernels mq_linear_kernels_portable = {
    "portable", quantize_row_portable, int8_tiles_portable, int4_tiles_portable, dot_u8s8_portable,
    NULL, NULL, 0, 0, NULL}; /* no batch kernels: every batch runs the tiles above */
