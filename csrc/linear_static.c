/*
 * linear_static.c : the static-quantization Linear kernel, integer x integer -> float
 * (contract in mono_quant.h, mq_linear_static_int8).
 *
 * The operands are brought to unsigned x signed bytes, the form the dot-product
 * instructions take (vpdpbusd; vpmaddwd after widening on AVX2; plain C on the portable
 * path, all from the Linear dispatch table in linear.h):
 *     xu = x (uint8), or x + 128 (int8 x),   zx = x_zero_point (+ 128)
 *     ws = w (int8),  or w - 128 (uint8 w),  zw = w_zero_point[n] (- 128)
 * and the centred sum expands exactly:
 *     sum (xu - zx)(ws - zw) = sum xu ws - zw sum xu - zx sum ws + k zx zw.
 * sum xu ws runs in blocks of MQ_LINEAR_STATIC_BLOCK whose int32 sums cannot overflow,
 * added up in int64: the result is exact, hence the same for any path, order and thread count.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "convert.h"
#include "linear.h"
#include "mono_quant.h"
#include "threadpool.h"

#define MQ_LS_MIN_MACS_PER_THREAD (1 << 18) /* smaller problems stay on one thread */

typedef struct {
  const uint8_t *xu;  /* [m, k] */
  const int64_t *xsum; /* [m]: sum of each xu row */
  int32_t zx;
  const void *w;
  mq_dtype w_dtype;
  const float *w_scale;
  const int32_t *w_zero_point;
  const float *bias;
  float x_scale;
  int64_t m, n, k;
  void *out;
  mq_dtype out_dtype;
  int64_t (*dot)(const uint8_t *xu, const int8_t *ws, int64_t len);
  atomic_int nomem;
} linear_static_job;

static int in_range(int32_t v, mq_dtype dtype) {
  return dtype == MQ_I8 ? (v >= -128 && v <= 127) : (v >= 0 && v <= 255);
}

static int64_t dot_exact(const linear_static_job *job, const uint8_t *xu, const int8_t *ws) {
  int64_t total = 0;
  for (int64_t k0 = 0; k0 < job->k; k0 += MQ_LINEAR_STATIC_BLOCK) {
    const int64_t len = job->k - k0 < MQ_LINEAR_STATIC_BLOCK ? job->k - k0 : MQ_LINEAR_STATIC_BLOCK;
    total += job->dot(xu + k0, ws + k0, len);
  }
  return total;
}

static void linear_static_rows(void *ctx, int64_t n_begin, int64_t n_end) {
  linear_static_job *job = ctx;
  const int64_t k = job->k;
  /* ones: sum ws as a dot product, at SIMD speed.  flipped: a uint8 weight row as int8. */
  uint8_t *ones = malloc((size_t)k);
  int8_t *flipped = job->w_dtype == MQ_U8 ? malloc((size_t)k) : NULL;
  if (!ones || (job->w_dtype == MQ_U8 && !flipped)) {
    free(ones);
    free(flipped);
    atomic_store(&job->nomem, 1);
    return;
  }
  memset(ones, 1, (size_t)k);
  for (int64_t c = n_begin; c < n_end; c++) {
    const int8_t *ws;
    int64_t zw = job->w_zero_point[c];
    if (flipped) {
      const uint8_t *row = (const uint8_t *)job->w + c * k;
      for (int64_t i = 0; i < k; i++) flipped[i] = (int8_t)(row[i] ^ 0x80);
      ws = flipped;
      zw -= 128;
    } else {
      ws = (const int8_t *)job->w + c * k;
    }
    const int64_t wsum = dot_exact(job, ones, ws);
    const int64_t zx = job->zx;
    const int64_t constant = k * zx * zw - zx * wsum;
    const float scale = job->x_scale * job->w_scale[c];
    for (int64_t mi = 0; mi < job->m; mi++) {
      const int64_t total = dot_exact(job, job->xu + mi * k, ws) - zw * job->xsum[mi] + constant;
      float v = (float)total * scale;
      if (job->bias) v = v + job->bias[c];
      mq_store_f32(job->out, job->out_dtype, mi * job->n + c, v);
    }
  }
  free(ones);
  free(flipped);
}

mq_status mq_linear_static_int8(const void *x, mq_dtype x_dtype, float x_scale, int32_t x_zero_point,
                                const void *w, mq_dtype w_dtype, const float *w_scale,
                                const int32_t *w_zero_point, const float *bias, int64_t m,
                                int64_t n, int64_t k, void *out, mq_dtype out_dtype,
                                int num_threads) {
  if ((x_dtype != MQ_I8 && x_dtype != MQ_U8) || (w_dtype != MQ_I8 && w_dtype != MQ_U8) ||
      !mq_is_float_dtype(out_dtype))
    return MQ_ERR_DTYPE;
  if (m < 0 || n < 1 || k < 1) return MQ_ERR_SHAPE;
  if (!(isfinite(x_scale) && x_scale > 0.0f) || !in_range(x_zero_point, x_dtype)) return MQ_ERR_ARG;
  for (int64_t c = 0; c < n; c++) {
    if (!(isfinite(w_scale[c]) && w_scale[c] > 0.0f) || !isfinite(x_scale * w_scale[c]) ||
        !in_range(w_zero_point[c], w_dtype) || (bias && !isfinite(bias[c])))
      return MQ_ERR_ARG;
  }
  if (m == 0) return MQ_OK;
  /* int8 x moves to uint8 (x + 128); uint8 x is used as it is */
  uint8_t *xu_buf = NULL;
  const uint8_t *xu = x;
  int32_t zx = x_zero_point;
  if (x_dtype == MQ_I8) {
    xu_buf = malloc((size_t)m * (size_t)k);
    if (!xu_buf) return MQ_ERR_NOMEM;
    const uint8_t *src = x;
    for (int64_t i = 0; i < m * k; i++) xu_buf[i] = src[i] ^ 0x80;
    xu = xu_buf;
    zx += 128;
  }
  int64_t *xsum = malloc(sizeof(int64_t) * (size_t)m);
  if (!xsum) {
    free(xu_buf);
    return MQ_ERR_NOMEM;
  }
  for (int64_t mi = 0; mi < m; mi++) {
    int64_t sum = 0;
    for (int64_t i = 0; i < k; i++) sum += xu[mi * k + i];
    xsum[mi] = sum;
  }
  linear_static_job job = {xu, xsum, zx, w, w_dtype, w_scale, w_zero_point, bias, x_scale, m, n, k,
                           out, out_dtype, mq_linear_active()->dot_u8s8, 0};
  const int64_t macs_per_channel = m * k;
  const int64_t min_channels = MQ_LS_MIN_MACS_PER_THREAD / macs_per_channel;
  mq_parallel_for(n, min_channels > 1 ? min_channels : 1, 1, num_threads, linear_static_rows, &job);
  free(xsum);
  free(xu_buf);
  return atomic_load(&job.nomem) ? MQ_ERR_NOMEM : MQ_OK;
}
