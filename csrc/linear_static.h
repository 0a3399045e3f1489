/*
 * linear_static.h : the packed static-INT8 Linear (StaticQuantizedLinear's forward): its packed
 * layout, the job a forward call hands to the per-ISA tile functions, and their table.
 *
 * Included by files compiled with different ISA flags (linear_static_packed.c,
 * linear_static_avx2.c, linear_static_avx512.c): types, constants, declarations and static
 * inline code only.
 *
 * ---- packed layout --------------------------------------------------------------------------
 * The INT8 packed weight of linear.h (header, tiles of 16 rows: wu = w + 128 four k at a time,
 * scale[16], zero[16]) -- the same bytes mq_linear_int8_pack writes, so the dynamic and the
 * static kernels share the weight layout and its SIMD inner loop -- followed by
 *     int64 qsum[tiles * 16],   qsum[r] = sum_{i < k} (q[r][i] - zero_point[r])   (0 for padding),
 *                               which a per-tensor input zero point needs (below)
 *     float max_scale, 60 zero bytes     max_r scale[r]: the per-call check that every
 *                                        x_scale * scale[r] is finite is one product, not n
 *
 * ---- what a forward computes -----------------------------------------------------------------
 * The input x (float) is quantized with the calibrated scale s and zero point zp as
 * mq_int8_quantize does (int8.c: t = clamp(x / s, +-1024), q = clamp(round_half_even(t) + zp,
 * qmin, qmax)), and moved to signed bytes: xs = q - off, zs = zp - off, off = 128 for uint8
 * inputs and 0 for int8 ones, so xs = clamp(round_half_even(t) + zs, -128, 127) directly.
 * Rows are padded with xs = 0 to kp = roundup(k, 32);  sx[m] = sum_i xs[m][i].
 * With zw = zero[n] + 128 (so that q - zero_point = wu - zw):
 *     acc[m][n] = sum_i (xs - zs)(wu - zw)
 *               = sum_i xs * wu  -  zw * sx[m]  -  zs * qsum[n]                  (exact)
 * (padding adds 0: xs = 0 there).  sum_i xs * wu is what vpdpbusd computes (unsigned weight
 * bytes times signed activation bytes).  Every |term| is below 2^31 for k <= 32768, and so is
 * acc (255 * 255 * 32768 < 2^31): the sum is formed in wrapping int32 arithmetic, exact.
 * Longer rows (k > MQ_LINEAR_STATIC_KC) are summed in chunks of MQ_LINEAR_STATIC_KC into int64.
 *     out[m][n] = (float)acc * (x_scale * w_scale[n]) + bias[n]
 * the conversion, the scale product and the rescale separate float32 roundings (no FMA), the
 * same as mq_linear_static_int8 and the torch reference: bit for bit, on every path and
 * every thread count.
 */
#ifndef MQ_LINEAR_STATIC_H
#define MQ_LINEAR_STATIC_H

#include <stdint.h>

#include "linear.h"
#include "mono_quant.h"

/* Longest k a tile function sums in one int32 pass (a multiple of MQ_LINEAR_QK):
 * 128 * 255 * 32768 < 2^31 and 255 * 255 * 32768 < 2^31. */
#define MQ_LINEAR_STATIC_KC 32768
#define MQ_LINEAR_STATIC_TAIL 64 /* float max_scale, 60 zero bytes */

/* One forward call, as the tile functions see it.  Activations are already quantized. */
typedef struct {
  const uint8_t *tiles;  /* first tile (just after the header) */
  int64_t tile_bytes;
  int64_t n, kp, nb;     /* nb = kp / 32 */
  int64_t m;
  const void *xs;        /* [m][kp]: int8, or int16 where the table's xs_size is 2 */
  /* sum over k quads [q0, q1) (4 k each) of this pass: all of kp when acc64 == NULL */
  int64_t q0, q1;
  /* acc64 == NULL: the whole sum in one pass; the tile function writes out[].
   * acc64 != NULL: acc64[m][n] += sum_{quads} xs * wu (int64), nothing else. */
  int64_t *acc64;
  const int32_t *sx;     /* [m]: sum xs (mod 2^32: used only when k <= MQ_LINEAR_STATIC_KC) */
  int32_t zs;
  const int64_t *qsum;   /* [tiles * 16], in the packed weight */
  float x_scale;
  const float *bias;     /* [n] float32, or NULL */
  void *out;             /* [m][n] of out_dtype */
  mq_dtype out_dtype;
} mq_linear_static_job;

typedef struct {
  const char *name;
  int xs_size; /* bytes per quantized activation: 1 (int8), or 2 (int16, for vpmaddwd) */
  /* Quantize one row (formulas above): xs[0..kp) (zero padded), *sum = sum xs.
   * @return 0 if x holds NaN or Inf, else 1. */
  int (*quantize_row)(const void *x, mq_dtype dtype, int64_t k, int64_t kp, float scale,
                      int32_t zs, void *xs, int64_t *sum);
  void (*tiles)(const mq_linear_static_job *job, int64_t t0, int64_t t1);
} mq_linear_static_kernels;

extern const mq_linear_static_kernels mq_linear_static_kernels_portable;
extern const mq_linear_static_kernels mq_linear_static_kernels_avx2;
extern const mq_linear_static_kernels mq_linear_static_kernels_avx512_vnni;

/* The scalar form of the quantization step (int8.c's quantize_value, moved to signed bytes). */
static inline int32_t mq_linear_static_quantize1(float v, float s, float zs) {
  float t = v / s;
  t = t < -1024.0f ? -1024.0f : (t > 1024.0f ? 1024.0f : t);
  const float magic = 12582912.0f; /* 1.5 * 2^23: round half to even in the default mode */
  float q = ((t + magic) - magic) + zs;
  q = q < -128.0f ? -128.0f : (q > 127.0f ? 127.0f : q);
  return (int32_t)q;
}

/* out[m][n0 + r] = (float)acc[r] * ws[r] + bias[n0 + r] for r < rows (ws = x_scale * w_scale). */
static inline void mq_linear_static_store(const mq_linear_static_job *job, int64_t m, int64_t n0,
                                          const int32_t *acc, const float *ws, int64_t rows) {
  for (int64_t r = 0; r < rows; r++) {
    float v = (float)acc[r] * ws[r];
    if (job->bias) v = v + job->bias[n0 + r];
    mq_store_f32(job->out, job->out_dtype, m * job->n + n0 + r, v);
  }
}

#endif /* MQ_LINEAR_STATIC_H */
