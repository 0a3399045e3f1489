/*
 * linear_static.c : the static-quantization Linear kernel, integer x integer -> float
 * (contract in mono_quant.h, mq_linear_static_int8).  Portable C written so that the
 * compiler vectorizes the inner product (int16 x int16 -> int32 multiply-adds: pmaddwd on
 * x86, smlal on Arm).
 *
 * Both operands are centred once into int16 (x - x_zero_point, w - w_zero_point[n], each in
 * [-255, 255]), so the zero-point correction is exact and costs nothing in the inner loop.
 * Products are at most 255 * 255 = 65025 in magnitude; int32 partial sums over blocks of
 * 32768 products stay below 2^31 and are added up in int64: the sum is exact, hence the
 * same for any order, vector width and thread count.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "convert.h"
#include "mono_quant.h"
#include "threadpool.h"

#define MQ_LS_BLOCK_K 32768                 /* 32768 * 65025 < 2^31 */
#define MQ_LS_MIN_MACS_PER_THREAD (1 << 18) /* smaller problems stay on one thread */
#define MQ_LS_ROWS 4                        /* weight rows that share one pass over x */

typedef struct {
  const int16_t *xs; /* [m, k]: x - x_zero_point */
  const void *w;
  mq_dtype w_dtype;
  const float *w_scale;
  const int32_t *w_zero_point;
  const float *bias;
  float x_scale;
  int64_t m, n, k;
  void *out;
  mq_dtype out_dtype;
  atomic_int nomem;
} linear_static_job;

static int in_range(int32_t v, mq_dtype dtype) {
  return dtype == MQ_I8 ? (v >= -128 && v <= 127) : (v >= 0 && v <= 255);
}

/* Centre `len` int8 / uint8 values: dst[i] = src[i] - zero_point. */
static void centre_row(const void *src, mq_dtype dtype, int32_t zero_point, int64_t len,
                       int16_t *restrict dst) {
  const int16_t zp = (int16_t)zero_point;
  if (dtype == MQ_I8) {
    const int8_t *restrict s = src;
    for (int64_t i = 0; i < len; i++) dst[i] = (int16_t)(s[i] - zp);
  } else {
    const uint8_t *restrict s = src;
    for (int64_t i = 0; i < len; i++) dst[i] = (int16_t)(s[i] - zp);
  }
}

/* Exact dot products of one x row with MQ_LS_ROWS centred weight rows (w + r * k). */
static void dot_rows(const int16_t *restrict x, const int16_t *restrict w, int64_t k, int64_t *total) {
  for (int r = 0; r < MQ_LS_ROWS; r++) total[r] = 0;
  for (int64_t k0 = 0; k0 < k; k0 += MQ_LS_BLOCK_K) {
    const int64_t len = k - k0 < MQ_LS_BLOCK_K ? k - k0 : MQ_LS_BLOCK_K;
    const int16_t *restrict xb = x + k0;
    const int16_t *restrict w0 = w + k0, *restrict w1 = w0 + k, *restrict w2 = w1 + k,
                  *restrict w3 = w2 + k;
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (int64_t i = 0; i < len; i++) {
      const int32_t xv = xb[i];
      a0 += xv * w0[i];
      a1 += xv * w1[i];
      a2 += xv * w2[i];
      a3 += xv * w3[i];
    }
    total[0] += a0;
    total[1] += a1;
    total[2] += a2;
    total[3] += a3;
  }
}

static void linear_static_rows(void *ctx, int64_t n_begin, int64_t n_end) {
  linear_static_job *job = ctx;
  const int64_t k = job->k;
  const size_t w_row_bytes = (size_t)k * mq_dtype_size(job->w_dtype);
  /* MQ_LS_ROWS centred weight rows; in a last, partial group the unused rows keep old
   * values whose sums are computed and dropped */
  int16_t *wc = calloc((size_t)MQ_LS_ROWS * (size_t)k, sizeof(int16_t));
  if (!wc) {
    atomic_store(&job->nomem, 1);
    return;
  }
  for (int64_t n0 = n_begin; n0 < n_end; n0 += MQ_LS_ROWS) {
    const int rows = n_end - n0 < MQ_LS_ROWS ? (int)(n_end - n0) : MQ_LS_ROWS;
    float scale[MQ_LS_ROWS];
    for (int r = 0; r < rows; r++) {
      const int64_t c = n0 + r;
      centre_row((const char *)job->w + (size_t)c * w_row_bytes, job->w_dtype,
                 job->w_zero_point[c], k, wc + (int64_t)r * k);
      scale[r] = job->x_scale * job->w_scale[c];
    }
    for (int64_t mi = 0; mi < job->m; mi++) {
      int64_t total[MQ_LS_ROWS];
      dot_rows(job->xs + mi * k, wc, k, total);
      for (int r = 0; r < rows; r++) {
        float v = (float)total[r] * scale[r];
        if (job->bias) v = v + job->bias[n0 + r];
        mq_store_f32(job->out, job->out_dtype, mi * job->n + n0 + r, v);
      }
    }
  }
  free(wc);
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
  int16_t *xs = malloc(sizeof(int16_t) * (size_t)m * (size_t)k);
  if (!xs) return MQ_ERR_NOMEM;
  const size_t x_row_bytes = (size_t)k * mq_dtype_size(x_dtype);
  for (int64_t mi = 0; mi < m; mi++)
    centre_row((const char *)x + (size_t)mi * x_row_bytes, x_dtype, x_zero_point, k, xs + mi * k);
  linear_static_job job = {xs, w, w_dtype, w_scale, w_zero_point, bias, x_scale, m, n, k, out,
                           out_dtype, 0};
  const int64_t macs_per_channel = m * k;
  const int64_t min_channels = MQ_LS_MIN_MACS_PER_THREAD / macs_per_channel;
  mq_parallel_for(n, min_channels > MQ_LS_ROWS ? min_channels : MQ_LS_ROWS, MQ_LS_ROWS, num_threads,
                  linear_static_rows, &job);
  free(xs);
  return atomic_load(&job.nomem) ? MQ_ERR_NOMEM : MQ_OK;
}
