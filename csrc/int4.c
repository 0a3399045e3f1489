/* int4.c : INT4 group-wise quantize + pack, unpack + dequantize, and the MSE scale search
 * (formats and formulas in mono_quant.h; the torch twin is mono_quant/_reference.py). */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "convert.h"
#include "mono_quant.h"
#include "threadpool.h"

/* Rows below this many elements per thread stay on one thread: waking workers costs more. */
#define MQ_INT4_MIN_ELEMS_PER_THREAD 16384
#define MQ_INT4_MAX_GROUP 256
#define MQ_INT4_MIN_SCALE 0x1p-24f /* smallest positive fp16 (subnormal) */
#define MQ_INT4_MAX_SCALE 65504.0f /* largest finite fp16 */
/* x + 1.5*2^23 - 1.5*2^23 rounds |x| < 2^22 to an integer, ties to even, in the default
 * rounding mode; the values rounded here are clamped to [-15, 15] first. */
#define MQ_INT4_ROUND_MAGIC 12582912.0f

/* The MSE candidates (table in mono_quant.h), one row per group size 32, 64, 128, 256. */
#define MQ_INT4_MSE_CANDIDATES 4
static const float mse_divisors[2][4][MQ_INT4_MSE_CANDIDATES] = {
    {{15.0f, 15.25f, 15.5f, 16.0f},
     {15.0f, 15.5f, 15.75f, 16.25f},
     {15.0f, 15.75f, 16.25f, 17.0f},
     {15.0f, 16.5f, 17.25f, 18.0f}}, /* asymmetric */
    {{7.0f, 7.5f, 8.0f, 8.5f},
     {7.0f, 7.75f, 8.25f, 8.75f},
     {7.0f, 8.0f, 8.5f, 9.0f},
     {7.0f, 8.5f, 9.0f, 9.75f}}, /* symmetric */
};

static int valid_group_size(int64_t g) { return g == 32 || g == 64 || g == 128 || g == 256; }

static const float *group_divisors(int symmetric, int64_t g) {
  const int row = g == 32 ? 0 : g == 64 ? 1 : g == 128 ? 2 : 3;
  return mse_divisors[symmetric != 0][row];
}

static int64_t min_rows_per_thread(int64_t k) {
  const int64_t rows = MQ_INT4_MIN_ELEMS_PER_THREAD / (k > 0 ? k : 1);
  return rows > 0 ? rows : 1;
}

/* The fp16 scale for range / divisor, as float32: clamped into fp16's positive range first,
 * so it is never 0 or Inf. */
static float fp16_scale(float range, float divisor) {
  float s = range / divisor;
  s = s < MQ_INT4_MIN_SCALE ? MQ_INT4_MIN_SCALE : s;
  s = s > MQ_INT4_MAX_SCALE ? MQ_INT4_MAX_SCALE : s;
  return mq_f16_to_f32(mq_f32_to_f16(s));
}

/* round_half_even(clamp(v, lo, hi)) for integer bounds |lo|, |hi| <= 15. */
static inline float clamp_round(float v, float lo, float hi) {
  v = v < lo ? lo : v;
  v = v > hi ? hi : v;
  return (v + MQ_INT4_ROUND_MAGIC) - MQ_INT4_ROUND_MAGIC;
}

/* ---- quantize + pack ------------------------------------------------------------------- */
typedef struct {
  const void *x;
  mq_dtype x_dtype;
  int64_t k, group_size;
  int symmetric;
  mq_int4_scale_method method;
  uint8_t *qweight;
  uint16_t *scale;
  uint8_t *zero_point;
  atomic_int nonfinite;
} quantize_job;

/* Squared error of quantizing the g values xs with scale s and signed levels [lo, hi],
 * summed by the fixed pairwise tree of the header.  e is scratch of g floats. */
static float group_error(const float *restrict xs, int64_t g, float s, float lo, float hi,
                         float *restrict e) {
  int64_t h = g / 2;
  for (int64_t i = 0; i < h; i++) { /* the squares and the tree's first level */
    const float d0 = xs[i] - clamp_round(xs[i] / s, lo, hi) * s;
    const float d1 = xs[i + h] - clamp_round(xs[i + h] / s, lo, hi) * s;
    e[i] = d0 * d0 + d1 * d1;
  }
  for (h /= 2; h >= 1; h /= 2)
    for (int64_t i = 0; i < h; i++) e[i] = e[i] + e[i + h];
  return e[0];
}

/* The search: the first divisor (the absmax one) unless a later one is strictly better. */
static float search_scale(const float *xs, int64_t g, float range, const float *divisors,
                          float lo, float hi, float base_scale, float *e) {
  float best_scale = base_scale, prev = base_scale;
  float best_err = group_error(xs, g, base_scale, lo, hi, e);
  for (int c = 1; c < MQ_INT4_MSE_CANDIDATES; c++) {
    const float s = fp16_scale(range, divisors[c]);
    if (s == prev) continue; /* same scale, same error: cannot be strictly better */
    prev = s;
    const float err = group_error(xs, g, s, lo, hi, e);
    if (err < best_err) {
      best_err = err;
      best_scale = s;
    }
  }
  return best_scale;
}

/* Min and max of g values (g a power of two >= 2) by halving, which compilers vectorize;
 * 0 if a value is NaN or Inf.  scratch holds g floats. */
static int group_minmax(const float *restrict xs, int64_t g, float *restrict scratch, float *mn,
                        float *mx) {
  unsigned nonfinite = 0;
  for (int64_t i = 0; i < g; i++) {
    uint32_t bits;
    memcpy(&bits, &xs[i], sizeof bits);
    nonfinite |= (bits & 0x7f800000u) == 0x7f800000u;
  }
  if (nonfinite) return 0;
  int64_t h = g / 2;
  float *restrict lo = scratch, *restrict hi = scratch + h;
  for (int64_t i = 0; i < h; i++) {
    const float a = xs[i], b = xs[i + h];
    lo[i] = b < a ? b : a;
    hi[i] = b > a ? b : a;
  }
  for (h /= 2; h >= 1; h /= 2)
    for (int64_t i = 0; i < h; i++) {
      lo[i] = lo[i + h] < lo[i] ? lo[i + h] : lo[i];
      hi[i] = hi[i + h] > hi[i] ? hi[i + h] : hi[i];
    }
  *mn = lo[0];
  *mx = hi[0];
  return 1;
}

/* Scale and zero point of one group of g float32 values; 0 if a value is NaN or Inf. */
static int group_params(const quantize_job *job, const float *xs, float *e, float *out_scale,
                        float *out_zp) {
  float mn, mx;
  if (!group_minmax(xs, job->group_size, e, &mn, &mx)) return 0;
  const float *divisors = group_divisors(job->symmetric, job->group_size);
  float range, s, zp;
  if (job->symmetric) {
    const float a = fabsf(mn), b = fabsf(mx);
    range = a > b ? a : b;
    s = fp16_scale(range, divisors[0]);
    zp = 8.0f;
  } else {
    mn = mn < 0.0f ? mn : 0.0f;
    mx = mx > 0.0f ? mx : 0.0f;
    range = mx - mn; /* may overflow to Inf: fp16_scale clamps it */
    s = fp16_scale(range, divisors[0]);
    zp = -clamp_round(mn / s, -15.0f, 0.0f); /* == clamp(-round(mn / s), 0, 15) */
  }
  if (job->method == MQ_INT4_MSE)
    s = search_scale(xs, job->group_size, range, divisors, -zp, 15.0f - zp, s, e);
  *out_scale = s;
  *out_zp = zp;
  return 1;
}

static void quantize_rows(void *ctx, int64_t row_begin, int64_t row_end) {
  quantize_job *job = ctx;
  const int64_t g = job->group_size, groups = job->k / g;
  float xs[MQ_INT4_MAX_GROUP], e[MQ_INT4_MAX_GROUP];
  int32_t nib[MQ_INT4_MAX_GROUP];
  const size_t elem = mq_dtype_size(job->x_dtype);
  for (int64_t r = row_begin; r < row_end; r++) {
    for (int64_t j = 0; j < groups; j++) {
      const int64_t first = r * job->k + j * g;
      mq_row_to_f32((const char *)job->x + (size_t)first * elem, job->x_dtype, g, xs);
      float s, zp;
      if (!group_params(job, xs, e, &s, &zp)) {
        atomic_store(&job->nonfinite, 1);
        return;
      }
      const float lo = -zp, hi = 15.0f - zp;
      for (int64_t i = 0; i < g; i++) nib[i] = (int32_t)(clamp_round(xs[i] / s, lo, hi) + zp);
      uint8_t *restrict q = job->qweight + first / 2;
      for (int64_t i = 0; i < g / 2; i++) q[i] = (uint8_t)(nib[2 * i] | (nib[2 * i + 1] << 4));
      job->scale[r * groups + j] = mq_f32_to_f16(s);
      job->zero_point[r * groups + j] = (uint8_t)zp;
    }
  }
}

mq_status mq_int4_quantize_pack(const void *x, mq_dtype x_dtype, int64_t n, int64_t k,
                                int64_t group_size, int symmetric, mq_int4_scale_method method,
                                uint8_t *qweight, uint16_t *scale, uint8_t *zero_point,
                                int num_threads) {
  if (!mq_is_float_dtype(x_dtype)) return MQ_ERR_DTYPE;
  if (!valid_group_size(group_size) || (method != MQ_INT4_ABSMAX && method != MQ_INT4_MSE))
    return MQ_ERR_ARG;
  if (n < 0 || k < 0 || k % group_size != 0) return MQ_ERR_SHAPE;
  quantize_job job = {x, x_dtype, k, group_size, symmetric != 0, method, qweight, scale, zero_point, 0};
  mq_parallel_for(n, min_rows_per_thread(k), 1, num_threads, quantize_rows, &job);
  return atomic_load(&job.nonfinite) ? MQ_ERR_NONFINITE : MQ_OK;
}

/* ---- unpack + dequantize --------------------------------------------------------------- */
typedef struct {
  const uint8_t *qweight;
  const uint16_t *scale;
  const uint8_t *zero_point;
  int64_t k, group_size;
  void *out;
  mq_dtype out_dtype;
} dequantize_job;

static void dequantize_rows(void *ctx, int64_t row_begin, int64_t row_end) {
  const dequantize_job *job = ctx;
  const int64_t g = job->group_size, groups = job->k / g;
  for (int64_t r = row_begin; r < row_end; r++) {
    for (int64_t j = 0; j < groups; j++) {
      const float s = mq_f16_to_f32(job->scale[r * groups + j]);
      const int zp = job->zero_point[r * groups + j];
      const int64_t first = r * job->k + j * g;
      const uint8_t *q = job->qweight + first / 2;
      for (int64_t i = 0; i < g; i += 2) {
        const uint8_t b = q[i / 2];
        mq_store_f32(job->out, job->out_dtype, first + i, (float)((b & 15) - zp) * s);
        mq_store_f32(job->out, job->out_dtype, first + i + 1, (float)((b >> 4) - zp) * s);
      }
    }
  }
}

mq_status mq_int4_unpack_dequantize(const uint8_t *qweight, const uint16_t *scale,
                                    const uint8_t *zero_point, int64_t n, int64_t k,
                                    int64_t group_size, void *out, mq_dtype out_dtype,
                                    int num_threads) {
  if (!mq_is_float_dtype(out_dtype)) return MQ_ERR_DTYPE;
  if (!valid_group_size(group_size)) return MQ_ERR_ARG;
  if (n < 0 || k < 0 || k % group_size != 0) return MQ_ERR_SHAPE;
  const int64_t params = n * (k / group_size);
  for (int64_t i = 0; i < params; i++) {
    const float s = mq_f16_to_f32(scale[i]);
    if (!(isfinite(s) && s > 0.0f) || zero_point[i] > 15) return MQ_ERR_ARG;
  }
  dequantize_job job = {qweight, scale, zero_point, k, group_size, out, out_dtype};
  mq_parallel_for(n, min_rows_per_thread(k), 1, num_threads, dequantize_rows, &job);
  return MQ_OK;
}

/* ---- pack / unpack nibbles ------------------------------------------------------------- */
typedef struct {
  const uint8_t *src;
  uint8_t *dst;
  int64_t k;
  atomic_int bad_nibble;
} nibble_job;

static void pack_rows(void *ctx, int64_t row_begin, int64_t row_end) {
  nibble_job *job = ctx;
  const int64_t half = job->k / 2;
  for (int64_t r = row_begin; r < row_end; r++) {
    const uint8_t *restrict src = job->src + r * job->k;
    uint8_t *restrict dst = job->dst + r * half;
    unsigned seen = 0;
    for (int64_t i = 0; i < half; i++) {
      const unsigned lo = src[2 * i], hi = src[2 * i + 1];
      seen |= lo | hi;
      dst[i] = (uint8_t)(lo | (hi << 4));
    }
    if (seen > 15) {
      atomic_store(&job->bad_nibble, 1);
      return;
    }
  }
}

static void unpack_rows(void *ctx, int64_t row_begin, int64_t row_end) {
  nibble_job *job = ctx;
  const int64_t half = job->k / 2;
  for (int64_t r = row_begin; r < row_end; r++) {
    const uint8_t *restrict src = job->src + r * half;
    uint8_t *restrict dst = job->dst + r * job->k;
    for (int64_t i = 0; i < half; i++) {
      dst[2 * i] = src[i] & 15u;
      dst[2 * i + 1] = (uint8_t)(src[i] >> 4);
    }
  }
}

mq_status mq_int4_pack(const uint8_t *nibbles, int64_t n, int64_t k, uint8_t *qweight,
                       int num_threads) {
  if (n < 0 || k < 0 || k % 2 != 0) return MQ_ERR_SHAPE;
  nibble_job job = {nibbles, qweight, k, 0};
  mq_parallel_for(n, min_rows_per_thread(k), 1, num_threads, pack_rows, &job);
  return atomic_load(&job.bad_nibble) ? MQ_ERR_ARG : MQ_OK;
}

mq_status mq_int4_unpack(const uint8_t *qweight, int64_t n, int64_t k, uint8_t *nibbles,
                         int num_threads) {
  if (n < 0 || k < 0 || k % 2 != 0) return MQ_ERR_SHAPE;
  nibble_job job = {qweight, nibbles, k, 0};
  mq_parallel_for(n, min_rows_per_thread(k), 1, num_threads, unpack_rows, &job);
  return MQ_OK;
}
