/* int8.c : per-channel / per-tensor INT8 quantize and dequantize (formulas in mono_quant.h). */
#include <math.h>
#include <stdatomic.h>

#include "convert.h"
#include "mono_quant.h"
#include "threadpool.h"

/* Rows of `inner` elements below this stay on one thread: waking workers costs more. */
#define MQ_INT8_MIN_ELEMS_PER_THREAD 16384

typedef struct {
  const void *src;
  mq_dtype src_dtype;
  void *dst;
  mq_dtype dst_dtype;
  int64_t channels, inner;
  const float *scale;
  const int32_t *zero_point;
  atomic_int nonfinite;
} int8_job;

static mq_status check_scales(const float *scale, int64_t channels) {
  for (int64_t c = 0; c < channels; c++)
    if (!(isfinite(scale[c]) && scale[c] > 0.0f)) return MQ_ERR_ARG;
  return MQ_OK;
}

/* Round half to even without a libm call (nearbyintf is a call on baseline x86-64, and so
 * are fminf/fmaxf): adding and subtracting 1.5 * 2^23 rounds to an integer in the default
 * rounding mode, exactly for |t| <= 2^22 (no -ffast-math, so the compiler keeps both steps).
 * Clamping t to +-1024 first changes nothing: a value beyond lands outside [qmin, qmax]
 * after adding the zero point either way.  t is finite or +-inf (v finite, s finite > 0). */
static inline float quantize_value(float v, float s, float zp, float qmin, float qmax) {
  float t = v / s;
  t = t < -1024.0f ? -1024.0f : (t > 1024.0f ? 1024.0f : t);
  const float magic = 12582912.0f; /* 1.5 * 2^23 */
  const float q = ((t + magic) - magic) + zp;
  return q < qmin ? qmin : (q > qmax ? qmax : q);
}

/* NaN and +-Inf fail `|v| <= FLT_MAX`; written as a comparison so the loops vectorize. */
static inline int not_finite(float v) { return !(fabsf(v) <= 3.40282347e38f); }

/* One row of float32 input: branch-free so the compiler vectorizes it; NaN/Inf are noted,
 * and the caller then discards the output. */
static int quantize_row_f32(const float *restrict src, int64_t n, float s, float zp, mq_dtype dst_dtype,
                            void *dst) {
  int bad = 0;
  if (dst_dtype == MQ_I8) {
    int8_t *restrict out = dst;
    for (int64_t i = 0; i < n; i++) {
      bad |= not_finite(src[i]);
      out[i] = (int8_t)(int32_t)quantize_value(src[i], s, zp, -128.0f, 127.0f);
    }
  } else {
    uint8_t *restrict out = dst;
    for (int64_t i = 0; i < n; i++) {
      bad |= not_finite(src[i]);
      out[i] = (uint8_t)(int32_t)quantize_value(src[i], s, zp, 0.0f, 255.0f);
    }
  }
  return bad;
}

static void quantize_rows(void *ctx, int64_t row_begin, int64_t row_end) {
  int8_job *job = ctx;
  const float qmin = job->dst_dtype == MQ_I8 ? -128.0f : 0.0f;
  const float qmax = job->dst_dtype == MQ_I8 ? 127.0f : 255.0f;
  const size_t q_size = mq_dtype_size(job->dst_dtype);
  for (int64_t r = row_begin; r < row_end; r++) {
    const int64_t c = r % job->channels;
    const float s = job->scale[c], zp = (float)job->zero_point[c];
    const int64_t base = r * job->inner;
    if (job->src_dtype == MQ_F32) {
      if (quantize_row_f32((const float *)job->src + base, job->inner, s, zp, job->dst_dtype,
                           (char *)job->dst + (size_t)base * q_size)) {
        atomic_store(&job->nonfinite, 1);
        return;
      }
      continue;
    }
    for (int64_t i = 0; i < job->inner; i++) {
      const float v = mq_load_f32(job->src, job->src_dtype, base + i);
      if (not_finite(v)) {
        atomic_store(&job->nonfinite, 1);
        return;
      }
      const float q = quantize_value(v, s, zp, qmin, qmax);
      if (job->dst_dtype == MQ_I8)
        ((int8_t *)job->dst)[base + i] = (int8_t)q;
      else
        ((uint8_t *)job->dst)[base + i] = (uint8_t)q;
    }
  }
}

/* Per tensor (one channel): split the flat elements, not the rows, so that one large
 * activation tensor still uses every thread. */
static void quantize_flat_f32(void *ctx, int64_t begin, int64_t end) {
  int8_job *job = ctx;
  const size_t q_size = mq_dtype_size(job->dst_dtype);
  if (quantize_row_f32((const float *)job->src + begin, end - begin, job->scale[0],
                       (float)job->zero_point[0], job->dst_dtype,
                       (char *)job->dst + (size_t)begin * q_size))
    atomic_store(&job->nonfinite, 1);
}

static void dequantize_rows(void *ctx, int64_t row_begin, int64_t row_end) {
  int8_job *job = ctx;
  for (int64_t r = row_begin; r < row_end; r++) {
    const int64_t c = r % job->channels;
    const float s = job->scale[c];
    const int32_t zp = job->zero_point[c];
    const int64_t base = r * job->inner;
    for (int64_t i = 0; i < job->inner; i++) {
      const int32_t q = job->src_dtype == MQ_I8 ? ((const int8_t *)job->src)[base + i]
                                                : ((const uint8_t *)job->src)[base + i];
      mq_store_f32(job->dst, job->dst_dtype, base + i, (float)(q - zp) * s);
    }
  }
}

static int64_t min_rows_per_thread(int64_t inner) {
  const int64_t rows = MQ_INT8_MIN_ELEMS_PER_THREAD / (inner > 0 ? inner : 1);
  return rows > 0 ? rows : 1;
}

mq_status mq_int8_quantize(const void *x, mq_dtype x_dtype, int64_t outer, int64_t channels,
                           int64_t inner, const float *scale, const int32_t *zero_point,
                           void *q, mq_dtype q_dtype, int num_threads) {
  if (!mq_is_float_dtype(x_dtype) || (q_dtype != MQ_I8 && q_dtype != MQ_U8)) return MQ_ERR_DTYPE;
  if (outer < 0 || channels <= 0 || inner < 0) return MQ_ERR_SHAPE;
  mq_status st = check_scales(scale, channels);
  if (st != MQ_OK) return st;
  int8_job job = {x, x_dtype, q, q_dtype, channels, inner, scale, zero_point, 0};
  if (channels == 1 && x_dtype == MQ_F32)
    mq_parallel_for(outer * inner, MQ_INT8_MIN_ELEMS_PER_THREAD, 64, num_threads, quantize_flat_f32,
                    &job);
  else
    mq_parallel_for(outer * channels, min_rows_per_thread(inner), 1, num_threads, quantize_rows,
                    &job);
  return atomic_load(&job.nonfinite) ? MQ_ERR_NONFINITE : MQ_OK;
}

mq_status mq_int8_dequantize(const void *q, mq_dtype q_dtype, int64_t outer, int64_t channels,
                             int64_t inner, const float *scale, const int32_t *zero_point,
                             void *out, mq_dtype out_dtype, int num_threads) {
  if (!mq_is_float_dtype(out_dtype) || (q_dtype != MQ_I8 && q_dtype != MQ_U8)) return MQ_ERR_DTYPE;
  if (outer < 0 || channels <= 0 || inner < 0) return MQ_ERR_SHAPE;
  mq_status st = check_scales(scale, channels);
  if (st != MQ_OK) return st;
  int8_job job = {q, q_dtype, out, out_dtype, channels, inner, scale, zero_point, 0};
  mq_parallel_for(outer * channels, min_rows_per_thread(inner), 1, num_threads, dequantize_rows, &job);
  return MQ_OK;
}
