/*
 * mono_quant.h : the C API of mono_quant's kernels.
 *
 * Every kernel takes raw pointers to contiguous row-major data plus sizes, writes into
 * memory its caller allocated, and returns an mq_status (MQ_OK == 0).  No kernel allocates
 * in its hot loop, touches Python, aborts or exits.  The Python module (module.c, py_*.c) checks
 * DLPack tensors, calls these, and turns each status into one Python exception.
 *
 * Layout convention: a tensor quantized per channel is viewed as [outer, channels, inner]
 * (row-major); channel c owns the elements x[o][c][i] for all o, i.  Per-tensor
 * quantization is channels == 1.
 *
 * Numerics (bit-identical to the torch reference mono_quant/_reference.py):
 *   float32 arithmetic, no fused multiply-add, round half to even, and every output element
 *   computed by one thread in a fixed order, so results do not depend on the thread count.
 *
 * Threads: `num_threads` is an upper bound (pass torch.get_num_threads()); 1 runs on the
 * calling thread.  Small problems run single-threaded regardless.
 */
#ifndef MONO_QUANT_H
#define MONO_QUANT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes --------------------------------------------------------------------- */
typedef enum {
  MQ_OK = 0,
  MQ_ERR_ARG = 1,       /* an argument is out of its documented range */
  MQ_ERR_DTYPE = 2,     /* a tensor has a dtype this kernel does not take */
  MQ_ERR_DEVICE = 3,    /* a tensor is not in CPU memory */
  MQ_ERR_SHAPE = 4,     /* shapes do not agree with each other or with the contract */
  MQ_ERR_LAYOUT = 5,    /* a tensor is not contiguous row-major, or is misaligned */
  MQ_ERR_NONFINITE = 6, /* NaN or Inf where the kernel needs finite values */
  MQ_ERR_NOMEM = 7,     /* a scratch allocation failed */
  MQ_ERR_THREAD = 8,    /* the thread pool could not start a thread */
  MQ_ERR_READONLY = 9,  /* an output tensor is marked read-only */
  MQ_ERR_INDEX = 10,    /* an index (embedding lookup) is outside its table */
} mq_status;

/*! mq_status_name() : @return a static string naming `status` ("MQ_ERR_SHAPE", ...). */
const char *mq_status_name(mq_status status);

/* ---- element types -------------------------------------------------------------------- */
typedef enum {
  MQ_F32 = 0,
  MQ_F16 = 1,  /* IEEE binary16 */
  MQ_BF16 = 2, /* bfloat16 */
  MQ_I8 = 3,
  MQ_U8 = 4,
  MQ_I32 = 5,
  MQ_I64 = 6, /* histogram counts */
  MQ_F64 = 7, /* the GPTQ Hessian */
  MQ_DTYPE_COUNT
} mq_dtype;

/*! mq_dtype_name() : @return "float32", "float16", ... as torch spells them. */
const char *mq_dtype_name(mq_dtype dtype);
/*! mq_dtype_size() : @return bytes per element. */
size_t mq_dtype_size(mq_dtype dtype);

/* ---- CPU features --------------------------------------------------------------------- */
enum {
  MQ_CPU_AVX2 = 1u << 0,   /* AVX2 + FMA + F16C, and the OS saves YMM state */
  MQ_CPU_AVX512 = 1u << 1, /* AVX-512 F/BW/VL/DQ, and the OS saves ZMM state */
  MQ_CPU_VNNI = 1u << 2,   /* AVX-512 VNNI (vpdpbusd) */
  MQ_CPU_AMX = 1u << 3,    /* AMX-TILE + AMX-INT8 (tdpbusd), the OS saves tile state, and (Linux)
                            * arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) granted it */
};
/*! mq_cpu_detect() : @return the MQ_CPU_* bits this CPU and OS support (CPUID + XGETBV; for
 *  AMX also the Linux permission request, made once here).  Detection runs once; the result is
 *  cached.  MONO_QUANT_DISABLE_SIMD=1 in the environment clears every bit (portable paths
 *  only).  MQ_CPU_AMX is opt-in for now: set only with MONO_QUANT_ENABLE_AMX=1 (the kernel
 *  has not yet run on real AMX hardware); MONO_QUANT_DISABLE_AMX=1 clears it either way. */
unsigned mq_cpu_detect(void);

/* ---- reductions (metrics.c) ----------------------------------------------------------- */
/*! mq_minmax() :
 *  Per-channel minimum and maximum of x viewed as [outer, channels, inner].
 *  x: dtype F32, F16 or BF16.  out_min, out_max: float[channels].
 *  @return MQ_ERR_NONFINITE if x holds NaN or Inf, MQ_ERR_SHAPE if any size is 0. */
mq_status mq_minmax(const void *x, mq_dtype dtype, int64_t outer, int64_t channels,
                    int64_t inner, float *out_min, float *out_max, int num_threads);

/*! mq_sqnr() :
 *  SQNR in dB of y as an approximation of x (n elements each, dtypes F32/F16/BF16, may
 *  differ): 10*log10(sum x^2 / sum (x-y)^2) accumulated in double over fixed 4096-element
 *  chunks summed in order, so the result does not depend on the thread count.
 *  *out_db = +INFINITY when x == y, -INFINITY when x is all zero and y is not.
 *  @return MQ_ERR_NONFINITE if x or y holds NaN or Inf. */
mq_status mq_sqnr(const void *x, mq_dtype x_dtype, const void *y, mq_dtype y_dtype, int64_t n,
                  double *out_db, int num_threads);

/* ---- scale and zero point (qparams.c) ------------------------------------------------- */
/*! mq_qparams() :
 *  Scale and zero point for n channels with ranges [min[c], max[c]] and integer range
 *  [qmin, qmax] (e.g. -128..127 or 0..255).
 *    symmetric:  scale = max(|min|,|max|) / ((qmax-qmin)/2),  zero_point = (qmin+qmax+1)/2
 *    asymmetric: lo = min(min,0), hi = max(max,0), scale = (hi-lo)/(qmax-qmin),
 *                zero_point = clamp(qmin - round_half_even(lo/scale), qmin, qmax)
 *  In both, scale is clamped to >= FLT_MIN before the zero point is computed, so a
 *  zero-range channel gets a finite, positive scale.
 *  @return MQ_ERR_NONFINITE for NaN/Inf ranges, MQ_ERR_ARG if min > max or qmin >= qmax. */
mq_status mq_qparams(const float *min, const float *max, int64_t n, int32_t qmin, int32_t qmax,
                     int symmetric, float *scale, int32_t *zero_point);

/* ---- INT8 (int8.c) -------------------------------------------------------------------- */
/*! mq_int8_quantize() :
 *  q[o][c][i] = clamp(round_half_even(x[o][c][i] / scale[c]) + zero_point[c], qmin, qmax)
 *  with (qmin, qmax) = (-128, 127) for q_dtype MQ_I8 and (0, 255) for MQ_U8.
 *  x: F32, F16 or BF16 [outer, channels, inner]; scale: float[channels], each finite and > 0;
 *  zero_point: int32[channels].
 *  @return MQ_ERR_NONFINITE if x holds NaN/Inf, MQ_ERR_ARG for a bad scale. */
mq_status mq_int8_quantize(const void *x, mq_dtype x_dtype, int64_t outer, int64_t channels,
                           int64_t inner, const float *scale, const int32_t *zero_point,
                           void *q, mq_dtype q_dtype, int num_threads);

/*! mq_int8_dequantize() :
 *  out[o][c][i] = float(q[o][c][i] - zero_point[c]) * scale[c], rounded to nearest even
 *  into out_dtype (F32, F16 or BF16).  q: MQ_I8 or MQ_U8 [outer, channels, inner]. */
mq_status mq_int8_dequantize(const void *q, mq_dtype q_dtype, int64_t outer, int64_t channels,
                             int64_t inner, const float *scale, const int32_t *zero_point,
                             void *out, mq_dtype out_dtype, int num_threads);

/* ---- static quantization: histograms (metrics.c), integer linear (linear_static.c) -------- */
/*! mq_histogram() :
 *  Counts the n elements of x (dtype F32, F16 or BF16) into `bins` equal-width bins over
 *  [lo, hi]: with step = (float)bins / (hi - lo) (float32), element v goes to bin
 *    clamp(floor((v - lo) * step), 0, bins - 1)
 *  in float32 arithmetic, so values below lo land in bin 0 and values above hi in the last
 *  bin.  counts: int64[bins], overwritten.  Each thread counts its own contiguous part into
 *  private bins that are summed afterwards: integer sums, so the counts do not depend on
 *  the thread count.
 *  @return MQ_ERR_ARG unless lo < hi, hi - lo and step are finite and 1 <= bins <= 2^24;
 *          MQ_ERR_NONFINITE if x holds NaN or Inf; MQ_ERR_NOMEM if the per-thread bins
 *          cannot be allocated. */
mq_status mq_histogram(const void *x, mq_dtype dtype, int64_t n, float lo, float hi, int64_t bins,
                       int64_t *counts, int num_threads);

/*! mq_linear_static_int8() :
 *  Linear layer on quantized operands, integer x integer, float out:
 *    acc[m][n] = sum_k (x[m][k] - x_zero_point) * (w[n][k] - w_zero_point[n])     (exact)
 *    out[m][n] = (float)acc[m][n] * (x_scale * w_scale[n]) + bias[n]
 *  x: MQ_I8 or MQ_U8 [m, k] (per-tensor quantized input); w: MQ_I8 or MQ_U8 [n, k] (per output
 *  channel); w_scale: float[n]; w_zero_point: int32[n]; bias: float[n] or NULL; out: F32, F16
 *  or BF16 [m, n], the float32 result rounded to nearest even.  The sum is exact (int32 over
 *  blocks of 32768 products, then int64), its conversion to float rounds to nearest even, and
 *  the scale product and the rescale are separate float32 roundings (no FMA), so results
 *  match the torch reference bit for bit and do not depend on the thread count (threads
 *  split the output channels n).
 *  @return MQ_ERR_ARG if a zero point lies outside its operand's integer range, x_scale or a
 *          w_scale is not finite and > 0, or a bias is not finite; MQ_ERR_SHAPE for m < 0 or
 *          n, k < 1 (m == 0 does nothing); MQ_ERR_NOMEM if scratch memory fails. */
mq_status mq_linear_static_int8(const void *x, mq_dtype x_dtype, float x_scale, int32_t x_zero_point,
                                const void *w, mq_dtype w_dtype, const float *w_scale,
                                const int32_t *w_zero_point, const float *bias, int64_t m,
                                int64_t n, int64_t k, void *out, mq_dtype out_dtype,
                                int num_threads);

/*! mq_linear_static_packed_size() :
 *  Bytes of a packed static INT8 [n, k] weight (linear_static.h): the packed INT8 layout of
 *  mq_linear_int8_pack followed by one int64 weight sum per padded row.
 *  @return MQ_ERR_SHAPE for n, k outside 1..2^31. */
mq_status mq_linear_static_packed_size(int64_t n, int64_t k, int64_t *bytes);

/*! mq_linear_static_pack() :
 *  Repack a canonical INT8 weight (qweight MQ_I8 / MQ_U8 [n, k], scale float[n] finite > 0,
 *  zero_point int32[n] inside qweight's range) for mq_linear_static_packed; packed_bytes must
 *  be mq_linear_static_packed_size(n, k).  The first part is byte for byte mq_linear_int8_pack's.
 *  @return MQ_ERR_ARG for a bad scale or zero point; MQ_ERR_SHAPE for a wrong size. */
mq_status mq_linear_static_pack(const void *qweight, mq_dtype q_dtype, const float *scale,
                                const int32_t *zero_point, int64_t n, int64_t k, void *packed,
                                int64_t packed_bytes, int num_threads);

/*! mq_linear_static_packed() :
 *  The static INT8 Linear on a packed weight, float in and out: x (F32, F16 or BF16 [m, k]) is
 *  quantized per tensor with x_scale and x_zero_point to x_qdtype (MQ_U8 or MQ_I8) exactly as
 *  mq_int8_quantize does, then
 *    acc[m][n] = sum_k (xq[m][k] - x_zero_point) * (q[n][k] - zero_point[n])        (exact)
 *    out[m][n] = (float)acc[m][n] * (x_scale * w_scale[n]) + bias[n]
 *  as mq_linear_static_int8 (separate float32 roundings): the same bits as quantizing x and
 *  calling mq_linear_static_int8 on the canonical weight, for every path and thread count.
 *  bias: [n] of bias_dtype (F32, F16, BF16) or NULL; out: [m, n] of x_dtype.
 *  @return MQ_ERR_LAYOUT unless packed is a static INT8 [n, k] weight of packed_bytes;
 *          MQ_ERR_ARG for x_scale not finite > 0, x_zero_point outside x_qdtype's range, a
 *          w_scale not finite > 0 or whose product with x_scale is not finite, or a non-finite
 *          bias; MQ_ERR_NONFINITE if x holds NaN or Inf; MQ_ERR_NOMEM. */
mq_status mq_linear_static_packed(const void *x, mq_dtype x_dtype, int64_t m, float x_scale,
                                  int32_t x_zero_point, mq_dtype x_qdtype, const void *packed,
                                  int64_t packed_bytes, int64_t n, int64_t k, const void *bias,
                                  mq_dtype bias_dtype, void *out, int num_threads);

/*! mq_linear_static_isa_name() : the static Linear path in use ("avx512_vnni" or "portable"). */
const char *mq_linear_static_isa_name(void);


/* ---- INT4 group-wise (int4.c) --------------------------------------------------------- */
/* Canonical layout (docs/design.md): x [n, k] is cut into groups of `group_size` consecutive
 * elements along k (group_size in {32, 64, 128, 256}, k % group_size == 0).
 *   qweight    uint8 [n, k/2]: element k of a row lives in byte k/2, even k in the low
 *              nibble, odd k in the high nibble; nibbles are unsigned 0..15.
 *   scale      float16 bits (uint16_t) [n, k/group_size], finite and > 0.
 *   zero_point uint8 [n, k/group_size], 0..15 (8 when symmetric).
 *   value = float(nibble - zero_point) * float(scale).
 *
 * Per group, in float32 (lo = min(x), hi = max(x), range as below):
 *   symmetric:  range = max(|lo|, |hi|), zero_point = 8, base divisor 7
 *               (amax maps to +-7; level -8 is used only when a candidate clips).
 *   asymmetric: range = max(hi, 0) - min(lo, 0), base divisor 15,
 *               zero_point = clamp(-round_half_even(min(lo, 0) / s0), 0, 15) with s0 the
 *               base candidate's scale; every candidate keeps this zero point.
 *   candidate scale s(d) = f16(clamp(range / d, 2^-24, 65504)): the fp16 rounding of the
 *               clamped float32 quotient, so an all-zero group gets s = 2^-24 (nibbles all
 *               equal zero_point) and huge groups saturate at the largest fp16.
 *   nibble      = round_half_even(clamp(x / s, -zero_point, 15 - zero_point)) + zero_point,
 *               which equals clamp(round_half_even(x / s) + zero_point, 0, 15).
 * Scale methods:
 *   MQ_INT4_ABSMAX: the base divisor only (7 or 15).
 *   MQ_INT4_MSE:    tries four divisors (the base one first), each with its own fp16 scale
 *               and the group's one zero point, and keeps the first with the smallest
 *               squared error sum((x - (nibble - zero_point) * s)^2).  The divisors depend on
 *               the group size (larger groups have rarer extremes, worth clipping harder);
 *               they were picked to maximise the worst SQNR gain over Gaussian, Laplace and
 *               Student-t(5) weights:
 *                   group   symmetric              asymmetric
 *                    32     7, 7.5,  8,    8.5     15, 15.25, 15.5,  16
 *                    64     7, 7.75, 8.25, 8.75    15, 15.5,  15.75, 16.25
 *                   128     7, 8,    8.5,  9       15, 15.75, 16.25, 17
 *                   256     7, 8.5,  9,    9.75    15, 16.5,  17.25, 18
 *               The error sum over a group is float32 in a fixed pairwise tree (e[i] += e[i+h]
 *               for h = g/2, g/4, ..., 1) so the torch reference reproduces it bit for bit;
 *               a later candidate must be strictly better, so MSE is never worse than
 *               ABSMAX on any group. */
typedef enum {
  MQ_INT4_ABSMAX = 0,
  MQ_INT4_MSE = 1,
} mq_int4_scale_method;

/*! mq_int4_quantize_pack() :
 *  Quantizes x (F32, F16 or BF16, [n, k]) group-wise and writes qweight [n, k/2],
 *  scale (fp16 bits) [n, k/group_size] and zero_point [n, k/group_size] as above.
 *  @return MQ_ERR_ARG for a group size not in {32, 64, 128, 256} or an unknown method,
 *          MQ_ERR_SHAPE if k % group_size != 0 or a size is negative, MQ_ERR_DTYPE for
 *          another x dtype, MQ_ERR_NONFINITE if x holds NaN or Inf (outputs then partial). */
mq_status mq_int4_quantize_pack(const void *x, mq_dtype x_dtype, int64_t n, int64_t k,
                                int64_t group_size, int symmetric, mq_int4_scale_method method,
                                uint8_t *qweight, uint16_t *scale, uint8_t *zero_point,
                                int num_threads);

/*! mq_int4_unpack_dequantize() :
 *  out[r][i] = float(nibble(r, i) - zero_point[r][i/g]) * float(scale[r][i/g]), rounded to
 *  nearest even into out_dtype (F32, F16 or BF16); out is [n, k].
 *  @return MQ_ERR_ARG if a scale is not finite and > 0 or a zero point exceeds 15 (checked
 *          before anything is written), or for a bad group size; MQ_ERR_SHAPE as above. */
mq_status mq_int4_unpack_dequantize(const uint8_t *qweight, const uint16_t *scale,
                                    const uint8_t *zero_point, int64_t n, int64_t k,
                                    int64_t group_size, void *out, mq_dtype out_dtype,
                                    int num_threads);

/*! mq_int4_pack() :
 *  qweight[r][i/2] = nibbles[r][i] | nibbles[r][i+1] << 4 for even i; nibbles is uint8
 *  [n, k], k even.  @return MQ_ERR_ARG if a nibble exceeds 15 (qweight then partial),
 *  MQ_ERR_SHAPE if k is odd or a size is negative. */
mq_status mq_int4_pack(const uint8_t *nibbles, int64_t n, int64_t k, uint8_t *qweight,
                       int num_threads);

/*! mq_int4_unpack() : the inverse of mq_int4_pack: nibbles [n, k] from qweight [n, k/2].
 *  @return MQ_ERR_SHAPE if k is odd or a size is negative. */
mq_status mq_int4_unpack(const uint8_t *qweight, int64_t n, int64_t k, uint8_t *nibbles,
                         int num_threads);
/* ---- GPTQ (gptq.c) -----------------------------------------------------------------------
 *
 * GPTQ quantizes a Linear weight w [n, k] column by column and feeds each column's rounding
 * error into the columns not yet quantized, weighted by the Hessian of the layer's inputs, so
 * that x . w_hat stays close to x . w on calibration inputs x rather than w_hat close to w.
 * The Hessian H = x^T x is accumulated here; damping, the permutation and the factorisation
 * H + damp I = v v^T (v upper triangular: the Cholesky factor in reversed order, computed by
 * the caller with torch.linalg) are the caller's; the column loop runs here.  With v the loop
 * needs no inverse: it is GPTQ's update w_j -= e_i u[i][j] with u = v^-1 (H^-1 = u^T u), written
 * as a running sum of the errors themselves.  The result is the canonical INT4 layout above. */

/*! mq_gptq_hessian_add() :
 *  h[i][j] += sum_r x[r][i] * x[r][j] for j >= i, over the rows r of x (F32, F16 or BF16,
 *  [rows, k]) with mask[r] != 0 (mask uint8 [rows], or NULL: every row).  h is double [k, k];
 *  only its upper triangle (j >= i) is read and written, so the caller symmetrises it once
 *  after the last call.  Products of float32 values are exact in double; the counted rows are
 *  summed in chunks of 256 in row order (one addition to h per chunk), so the result does not
 *  depend on the thread count or the ISA.  *counted (if not NULL) = the rows counted.
 *  @return MQ_ERR_NONFINITE if a counted row holds NaN or Inf (checked before h is touched),
 *          MQ_ERR_SHAPE for rows < 0 or k < 1, MQ_ERR_NOMEM if scratch memory fails. */
mq_status mq_gptq_hessian_add(const void *x, mq_dtype x_dtype, int64_t rows, int64_t k,
                              const uint8_t *mask, double *h, int64_t *counted, int num_threads);

/*! mq_gptq_int4() :
 *  The GPTQ column loop with static groups.  Inputs, all row-major, none written:
 *    w     float32 [n, k], the weight with its columns in processing order: column i of w is
 *          column perm[i] of the layer.
 *    v     float32 [k, k], upper triangular with v v^T = the damped Hessian in the same column
 *          order (only j >= i is read; v[i][i] > 0).
 *    perm  int64 [k], a permutation of 0..k-1 (act-order), or NULL for the identity.
 *    scale (fp16 bits), zero_point: [n, k / group_size], the groups of the layer's own column
 *          order (column c is in group c / group_size), fixed before the loop ("static
 *          groups"), so groups stay contiguous in the stored layout whatever the order.
 *  For i = 0..k-1 and every row r, in float32 (no fused multiply-add), c = perm[i], s and z
 *  the scale (as float32) and zero point of row r's group of c, acc[r][*] starting at 0:
 *      target = w[r][i] + acc[r][i] / v[i][i]      (the weight with the errors fed back)
 *      level  = round_half_even(clamp(target / s, -z, 15 - z))
 *      nibble(r, c) = level + z                    (written to qweight [n, k/2], c's place)
 *      d = w[r][i] - level * s                     (the error of the stored, fp16-scaled value)
 *      acc[r][j] = acc[r][j] + d * v[i][j]         for j = i+1 .. k-1
 *  Columns are processed in blocks of block_size: inside a block each update is applied at
 *  once; the rest of the row receives the block's updates after the block ("lazy batch"), one
 *  column's update after the other in column order, so every element sees the same
 *  operations in the same order as the unblocked loop: block_size changes the speed, never
 *  the result.  Rows are independent (split across threads); results do not depend on the
 *  thread count or the ISA.
 *  @return MQ_ERR_ARG for a group size not in {32, 64, 128, 256}, block_size < 1, a scale not
 *          finite and > 0, a zero point > 15, v[i][i] <= 0 or perm not a permutation;
 *          MQ_ERR_SHAPE if k < 1, n < 0 or k % group_size != 0; MQ_ERR_NONFINITE if w or v's
 *          upper triangle holds NaN or Inf (all checked before anything is written);
 *          MQ_ERR_NOMEM if scratch memory fails (qweight then partial). */
mq_status mq_gptq_int4(const float *w, const float *v, const int64_t *perm, const uint16_t *scale,
                       const uint8_t *zero_point, int64_t n, int64_t k, int64_t group_size,
                       int64_t block_size, uint8_t *qweight, int num_threads);

/*! mq_gptq_isa_name() : the GPTQ inner loops in use: "portable", "avx2" or "avx512". */
const char *mq_gptq_isa_name(void);

/*! mq_gptq_isa_supported() : 1 if GPTQ table `name` can run here (and SIMD is not disabled by
 *  MONO_QUANT_DISABLE_SIMD), else 0. */
int mq_gptq_isa_supported(const char *name);

/*! mq_gptq_set_isa() : test hook, as mq_linear_set_isa, for the GPTQ tables ("auto" = best).
 *  @return MQ_ERR_ARG for an unknown name or a table this CPU cannot run. */
mq_status mq_gptq_set_isa(const char *name);

/* ---- LINEAR: quantized Linear forward (linear_portable.c, linear_avx2.c, linear_avx512.c) -
 *
 * y[m][n] = sum_k x[m][k] * w[n][k] + bias[n], with w an INT8 (per output channel) or INT4
 * (group-wise) weight repacked once by mq_linear_*_pack into an opaque, SIMD-friendly layout
 * (described in csrc/linear.h; the canonical layout of docs/design.md is what gets saved).
 *
 * Activations are quantized per call to int8 in blocks of 32 along k (one float scale per
 * block, d = max|x| / 127, symmetric, round half to even); the kernels take integer dot
 * products and apply the activation and weight scales in float32.  The only approximation
 * against float math on the dequantized weight is that rounding of the activations:
 *     |y - x . w_hat| <= sum_blocks (d_b / 2) * sum_{k in b} |w_hat[n][k]|  (+ float32 rounding).
 * All paths (portable, avx2, avx512_vnni, amx) and the torch twin mono_quant/_reference.py compute
 * the same integers; they differ only in float32 summation order and fused multiply-adds:
 *     |y_path - y_twin| <= 2^-20 * A + one unit in the last place of out_dtype,
 * where A is the same sum taken over absolute values of every term.  Results do not depend
 * on the thread count (each output element is computed by one thread in a fixed order).
 *
 * x: [m, k] F32, F16 or BF16; out: [m, n] of the same dtype; bias: [n] F32/F16/BF16 or NULL.
 * NaN or Inf in x is an error (MQ_ERR_NONFINITE), as for every quantized input.  Any finite
 * x is taken: a row large enough that the float32 sums could overflow (up to the float32
 * maximum) is computed scaled by an exact power of two (csrc/linear.h), so y is finite
 * wherever the result is; a result beyond out's dtype is +-inf, as a float cast gives.
 * Packed buffers start with a header naming format, n, k (and g); a mismatch is MQ_ERR_LAYOUT.
 */

/*! mq_linear_int8_packed_size() : bytes of the packed form of an INT8 [n, k] weight.
 *  @return MQ_ERR_SHAPE if n or k is < 1. */
mq_status mq_linear_int8_packed_size(int64_t n, int64_t k, int64_t *bytes);

/*! mq_linear_int8_pack() :
 *  Repack qweight [n, k] (q_dtype MQ_I8 or MQ_U8), scale float[n] (finite, > 0) and
 *  zero_point int32[n] (within the range of q_dtype) into `packed` of `packed_bytes`
 *  (== mq_linear_int8_packed_size).  Weight value = (q - zero_point) * scale.
 *  @return MQ_ERR_ARG for a bad scale or zero point, MQ_ERR_SHAPE for a wrong packed size. */
mq_status mq_linear_int8_pack(const void *qweight, mq_dtype q_dtype, const float *scale,
                              const int32_t *zero_point, int64_t n, int64_t k, void *packed,
                              int64_t packed_bytes, int num_threads);

/*! mq_linear_int8() : out[m, n] = x[m, k] . w^T + bias, w from mq_linear_int8_pack. */
mq_status mq_linear_int8(const void *x, mq_dtype x_dtype, int64_t m, const void *packed,
                         int64_t packed_bytes, int64_t n, int64_t k, const void *bias,
                         mq_dtype bias_dtype, void *out, int num_threads);

/*! mq_linear_int4_packed_size() : bytes of the packed form of an INT4 [n, k] weight, group g.
 *  @return MQ_ERR_ARG if g is not 32, 64, 128 or 256; MQ_ERR_SHAPE if n < 1, k < 1 or
 *          k % g != 0. */
mq_status mq_linear_int4_packed_size(int64_t n, int64_t k, int64_t group_size, int64_t *bytes);

/*! mq_linear_int4_pack() :
 *  Repack the canonical INT4 weight (docs/design.md): qweight uint8 [n, k/2] (element k in
 *  byte k/2, even k in the low nibble), scale float16 bits [n, k/g] (finite, > 0), zero_point
 *  uint8 [n, k/g] (0..15).  Weight value = (nibble - zero_point) * scale.
 *  @return MQ_ERR_ARG for a bad scale, zero point or group size, MQ_ERR_SHAPE for sizes. */
mq_status mq_linear_int4_pack(const uint8_t *qweight, const uint16_t *scale,
                              const uint8_t *zero_point, int64_t n, int64_t k, int64_t group_size,
                              void *packed, int64_t packed_bytes, int num_threads);

/*! mq_linear_int4() : out[m, n] = x[m, k] . w^T + bias, w from mq_linear_int4_pack. */
mq_status mq_linear_int4(const void *x, mq_dtype x_dtype, int64_t m, const void *packed,
                         int64_t packed_bytes, int64_t n, int64_t k, int64_t group_size,
                         const void *bias, mq_dtype bias_dtype, void *out, int num_threads);

/*! mq_linear_isa_name() : the forward path in use: "portable", "avx2", "avx512_vnni" or "amx"
 *  (AMX-INT8 tiles for batches, avx512_vnni otherwise); "amx_emulated" only when a test forced
 *  it: the AMX kernel with its tile instructions computed in C, for CPUs without AMX. */
const char *mq_linear_isa_name(void);

/*! mq_linear_batch_name() : the kernel the active path runs for batches of at least
 *  *min_batch rows ("amx", "amx_emulated"), or NULL (*min_batch = 0) when the path runs every
 *  batch on its row kernels, a few batch rows per pass over the weights. */
const char *mq_linear_batch_name(int64_t *min_batch);

/*! mq_linear_set_gemm_min_batch() :
 *  Test and benchmark hook: batches of at least `m` rows run the batch kernel of whichever path
 *  is active (m >= 1; INT64_MAX: never), for every later forward call in the process; m = 0
 *  restores each path's measured threshold.  Results are the same either way within the
 *  documented tolerance (the amx kernels and the avx512_vnni ones: the same bits).
 *  @return the previous override (0 = none). */
int64_t mq_linear_set_gemm_min_batch(int64_t m);

/*! mq_linear_isa_supported() : 1 if path `name` can run on this CPU (and SIMD is not disabled
 *  by MONO_QUANT_DISABLE_SIMD), else 0. */
int mq_linear_isa_supported(const char *name);

/*! mq_linear_set_isa() :
 *  Test hook: use path `name` ("portable", "avx2", "avx512_vnni", "amx", "amx_emulated", or
 *  "auto" for the best supported one) for every later forward call in the process.
 *  @return MQ_ERR_ARG for an unknown name or a path this CPU cannot run. */
mq_status mq_linear_set_isa(const char *name);

/* ---- EMBEDDING: INT8 tables quantized per row (embedding.c) ------------------------------
 *
 * A table q [rows, dim] (MQ_I8 or MQ_U8, row-major) with scale float[rows] and zero_point
 * int32[rows]: row r holds the values float(q[r][c] - zero_point[r]) * scale[r] (one float32
 * product, no other rounding).  Only the rows looked up are read and dequantized.  Indices
 * are int64; every index read is checked to lie in [0, rows) before anything is written, so
 * a bad index never reads outside the table.  out: F32, F16 or BF16, each value computed in
 * float32 and rounded to nearest even once.  Results do not depend on the thread count
 * (threads split output rows / bags; each is computed by one thread in a fixed order). */
typedef enum {
  MQ_EMBEDDING_SUM = 0,
  MQ_EMBEDDING_MEAN = 1,
  MQ_EMBEDDING_MAX = 2,
} mq_embedding_mode;

/*! mq_embedding_int8_gather() :
 *  out[i][c] = float(q[idx[i]][c] - zero_point[idx[i]]) * scale[idx[i]] for i < n; out [n, dim].
 *  @return MQ_ERR_INDEX if an index is outside [0, rows) (nothing written), MQ_ERR_SHAPE for
 *          rows < 1, dim < 1 or n < 0, MQ_ERR_DTYPE for other dtypes. */
mq_status mq_embedding_int8_gather(const void *q, mq_dtype q_dtype, const float *scale,
                                   const int32_t *zero_point, int64_t rows, int64_t dim,
                                   const int64_t *idx, int64_t n, void *out, mq_dtype out_dtype,
                                   int num_threads);

/*! mq_embedding_int8_bag() :
 *  Bag b (b < bags) reduces the rows idx[j], offsets[b] <= j < offsets[b + 1], in index
 *  order, skipping j with idx[j] == padding_idx (-1: none), into out[b] [bags, dim]:
 *    MQ_EMBEDDING_SUM:  acc = acc + v (v = the row's value times per_sample_weights[j] when
 *                       given: two float32 roundings, no fused multiply-add), from acc = 0
 *    MQ_EMBEDDING_MEAN: the sum, then divided by the number of rows counted (float32)
 *    MQ_EMBEDDING_MAX:  the elementwise maximum of the rows counted
 *  A bag with no row counted is all zeros.  offsets int64 [bags + 1], non-decreasing, within
 *  [0, n]; per_sample_weights float[n] or NULL (MQ_EMBEDDING_SUM only).
 *  @return MQ_ERR_ARG for bad offsets, an unknown mode, weights with another mode, or
 *          padding_idx outside [-1, rows); MQ_ERR_INDEX if an index inside a bag is outside
 *          [0, rows) (nothing written); MQ_ERR_SHAPE / MQ_ERR_DTYPE as above. */
mq_status mq_embedding_int8_bag(const void *q, mq_dtype q_dtype, const float *scale,
                                const int32_t *zero_point, int64_t rows, int64_t dim,
                                const int64_t *idx, int64_t n, const int64_t *offsets, int64_t bags,
                                const float *per_sample_weights, mq_embedding_mode mode,
                                int64_t padding_idx, void *out, mq_dtype out_dtype, int num_threads);

/*! mq_embedding_isa_name() : the embedding loops in use: "portable", "avx2" or "avx512" (the
 *  same C loops compiled for each ISA: the same results, faster). */
const char *mq_embedding_isa_name(void);

/*! mq_embedding_isa_supported() : 1 if loops `name` can run here (and SIMD is not disabled by
 *  MONO_QUANT_DISABLE_SIMD), else 0. */
int mq_embedding_isa_supported(const char *name);

/*! mq_embedding_set_isa() : test hook, as mq_linear_set_isa, for the embedding loops.
 *  @return MQ_ERR_ARG for an unknown name or loops this CPU cannot run. */
mq_status mq_embedding_set_isa(const char *name);

#ifdef __cplusplus
}
#endif
#endif /* MONO_QUANT_H */
