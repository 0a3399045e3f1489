/*
 * linear.h : the repacked ("packed") weight layouts of the quantized Linear kernels, the job
 * a forward call hands to the per-ISA tile functions, and the dispatch table type.
 *
 * Included by files compiled with different ISA flags (linear_portable.c, linear_avx2.c,
 * linear_avx512.c, cpu.c): it holds only types, constants, declarations and static inline
 * code, so no out-of-line function is ever compiled with the wrong flags.
 *
 * ---- activations ---------------------------------------------------------------------------
 * Each activation row x[k] (k padded with zeros to kp = roundup(k, 32)) is cut into blocks of
 * MQ_LINEAR_QK = 32 values.  Per block b:
 *     amax = max |x|,  d[b] = amax / 127,
 *     xq[i] = d[b] > 0 ? clamp(round_half_even(x[i] / d[b]), -127, 127) : 0,
 *     asum[b] = sum xq[i]                                                        (exact ints)
 * float32 arithmetic (a division, not a multiply by 1/d, so a subnormal d is harmless), so
 * every path (and the torch twin) gets the same xq, d and asum.  x / d never exceeds 127, so
 * this step is finite for every finite x.
 *
 * Rows too large for float32 sums: the sums below reach about nb * max_b d[b] * 2^33 (INT8:
 * |dot| < 2^19 and zero * asum < 2^19; INT4: |dot|, zero * asum < 2^16 times a float16 scale
 * < 2^16, with 2^6 to spare for rounding), which overflows for activations near the float32
 * maximum (1e37 with k = 64) even where the result itself is finite.  So when
 *     nb * max_b d[b] > MQ_LINEAR_SHIFT_LIMIT = 2^88      (computed exactly, in double)
 * (|x| above ~2^95 / nb: never for ordinary activations, whose results stay bit for bit as
 * they were), the row's d[b] are multiplied by 2^-e, e = the exponent of that product - 88,
 * and its result is computed without the bias, multiplied by 2^e and then the bias added:
 *     y = (scale * (...)) * 2^e + bias[n]          (the formulas below with d[b] * 2^-e)
 * Scaling by a power of two is exact (xq and asum are unchanged; only d[b] that become
 * float32-subnormal lose bits, terms 2^-150 times the row's largest), so the row gets the
 * float32 result of the unscaled formulas, which is finite wherever the result is.  A
 * result beyond the range of the output dtype is +-inf, as a float cast gives.
 *
 * ---- INT8 packed layout (MQ_LINEAR_MAGIC_INT8) ---------------------------------------------
 * header (64 bytes), then tiles of MQ_LINEAR_NR = 16 output rows, tile t = rows 16t..16t+15
 * (rows past n are padding: weight 0, scale 0).  One tile:
 *     for block b in [0, kp/32), for quad c in [0, 8):  64 bytes, byte 4r + j =
 *         wu[16t + r][32b + 4c + j],  wu = w + 128 as uint8 (w = q - center, int8)
 *     float  scale[16]
 *     int32  zero[16]       zero = zero_point - center
 * with center = 0 for int8 qweight and 128 for uint8 qweight, so q - zero_point = w - zero.
 * Sixteen rows sit side by side: one 512-bit register holds four k of all 16 rows, and a
 * dot-product instruction accumulates all 16 rows at once with no horizontal sums.
 *
 * ---- INT4 packed layout (MQ_LINEAR_MAGIC_INT4) ---------------------------------------------
 * header, then tiles of 16 rows.  One tile: for each group of g inputs (ng = k / g groups):
 *     uint16 scale[16] (float16 bits), uint8 zero[16] (0..15), 16 zero bytes     (64 bytes)
 *     for block b of the group, for c in [0, 4):  64 bytes, byte 4r + j =
 *         u[r][32b + 4c + j] | u[r][32b + 16 + 4c + j] << 4        (u: the nibble, 0..15)
 * The nibbles stay packed (0.5 byte per weight plus 64 bytes per 16 x g); `& 15` and `>> 4`
 * of one 64-byte chunk give two registers of four k each for 16 rows.
 *
 * ---- what a forward computes ----------------------------------------------------------------
 * INT8, row n of batch row m:
 *     dot[b] = sum_{i in b} w[n][i] * xq[m][i]                       (exact int32)
 *     y = scale[n] * (sum_b d[b] * dot[b] - zero[n] * S) + bias[n],  S = sum_b d[b] * asum[b]
 * INT4, group j of row n:
 *     dot[b] = sum_{i in b} u[n][i] * xq[m][i]                       (exact int32)
 *     y = sum_j scale[n][j] * (sum_{b in j} d[b] * dot[b] - zero[n][j] * D[j]) + bias[n],
 *     D[j] = sum_{b in j} d[b] * asum[b]
 * The sums over b run in order; SIMD paths use fused multiply-adds, the portable path does
 * not, so paths agree to float32 rounding (see mono_quant.h for the documented tolerance).
 *
 * ---- batch kernels ------------------------------------------------------------------------
 * A path may add batch kernels (int8_batch / int4_batch) that run instead of its tiles from
 * batch_min_m rows on.  The amx path's (linear_amx.c) take the activations as unsigned bytes
 * xu = xq + 128 (job->xu, made once per call by the driver) against signed weights, with
 * tdpbusd's C starting at -128 * the block's weight sum, so they compute the same exact dot[b]
 * and then the same float operations as avx512_vnni: the same bits.  The avx512_vnni path
 * has none: its tiles already take up to 2 tiles x 4 rows per pass, near the core's vpdpbusd
 * rate (a cache-blocked GEMM measured 2-6% slower).
 */
#ifndef MQ_LINEAR_H
#define MQ_LINEAR_H

#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "convert.h"
#include "mono_quant.h"

#define MQ_LINEAR_QK 32 /* activation block: one float scale per 32 int8 values */
#define MQ_LINEAR_NR 16 /* output rows per tile */
#define MQ_LINEAR_INT8_BLOCK_BYTES (MQ_LINEAR_QK * MQ_LINEAR_NR)     /* 512 */
#define MQ_LINEAR_INT4_BLOCK_BYTES (MQ_LINEAR_QK * MQ_LINEAR_NR / 2) /* 256 */
#define MQ_LINEAR_INT4_GROUP_HEADER 64
#define MQ_LINEAR_INT8_TILE_TAIL (MQ_LINEAR_NR * 8) /* scale[16] + zero[16] */
#define MQ_LINEAR_VERSION 1
/* A row with nb * max_b d[b] above this is computed scaled by a power of two (see above). */
#define MQ_LINEAR_SHIFT_LIMIT_LOG2 88
#define MQ_LINEAR_SHIFT_LIMIT 0x1p88

static const char MQ_LINEAR_MAGIC_INT8[8] = {'M', 'Q', 'L', 'I', 'N', 'I', '8', 0};
static const char MQ_LINEAR_MAGIC_INT4[8] = {'M', 'Q', 'L', 'I', 'N', 'I', '4', 0};

/* The first 64 bytes of a packed weight. */
typedef struct {
  char magic[8];
  int32_t version;
  int32_t group_size; /* INT4: g; INT8: 0 */
  int64_t n, k;       /* out_features, in_features */
  int64_t kp;         /* k rounded up to MQ_LINEAR_QK */
  int64_t tiles;      /* ceil(n / MQ_LINEAR_NR) */
  int64_t tile_bytes;
  int64_t reserved;
} mq_linear_header;
static_assert(sizeof(mq_linear_header) == 64, "mq_linear_header must be 64 bytes");

/* Header of one INT4 group inside a tile. */
typedef struct {
  uint16_t scale[MQ_LINEAR_NR]; /* float16 bits */
  uint8_t zero[MQ_LINEAR_NR];
  uint8_t pad[16];
} mq_linear_int4_group_header;
static_assert(sizeof(mq_linear_int4_group_header) == MQ_LINEAR_INT4_GROUP_HEADER,
              "an INT4 group header must be 64 bytes");

/* Scale and zero of one INT8 tile, after its weights. */
typedef struct {
  float scale[MQ_LINEAR_NR];
  int32_t zero[MQ_LINEAR_NR];
} mq_linear_int8_tile_tail;
static_assert(sizeof(mq_linear_int8_tile_tail) == MQ_LINEAR_INT8_TILE_TAIL,
              "an INT8 tile tail must be 128 bytes");

/* One forward call, as the tile functions see it.  Activations are already quantized. */
typedef struct {
  const uint8_t *tiles;  /* first tile (just after the header) */
  int64_t tile_bytes;
  int64_t n, k, kp, nb;  /* nb = kp / 32 */
  int64_t group, ng;     /* INT4: group size and k / group; INT8: 0, 0 */
  int64_t m;             /* batch rows */
  const int8_t *xq;      /* [m][kp] */
  const uint8_t *xu;     /* batch kernels with needs_xu: xq ^ 0x80 (= xq + 128), [m + 15][kp],
                          * rows past m zero (16 rows from any row < m are readable); else NULL */
  const float *d;        /* [m][nb] */
  const int32_t *acc_start; /* [m][nb]: -128 * asum, where a VNNI INT8 block sum starts */
  const float *corr;     /* INT8: S, [m]; INT4: D, [m][ng] */
  const float *bias;     /* [n] float32, or NULL */
  void *out;             /* [m][n] of out_dtype */
  mq_dtype out_dtype;
} mq_linear_job;

/* A forward path: quantize one activation row, run tiles [t0, t1) of an INT8 / INT4 job. */
typedef struct {
  const char *name;
  /* @return 0 if x holds NaN or Inf, else 1 (and xq, d, asum are filled) */
  int (*quantize_row)(const void *x, mq_dtype dtype, int64_t k, int64_t kp, int8_t *xq, float *d,
                      int32_t *asum);
  void (*int8_tiles)(const mq_linear_job *job, int64_t t0, int64_t t1);
  void (*int4_tiles)(const mq_linear_job *job, int64_t t0, int64_t t1);
  /* Static INT8 (linear_static.c): sum_i xu[i] * ws[i], exact, for len <= MQ_LINEAR_STATIC_BLOCK */
  int64_t (*dot_u8s8)(const uint8_t *xu, const int8_t *ws, int64_t len);
  /* Batch (GEMM) kernels, or NULL: run tiles [t0, t1) for every batch row, used instead of
   * int8_tiles / int4_tiles when m >= batch_min_m (measured per path; mq_linear_set_gemm_min_batch
   * overrides it).  Every output element is computed by the same operations in the same order
   * wherever its tile and row fall, so results do not depend on the thread count. */
  void (*int8_batch)(const mq_linear_job *job, int64_t t0, int64_t t1);
  void (*int4_batch)(const mq_linear_job *job, int64_t t0, int64_t t1);
  int64_t batch_min_m;
  int needs_xu;           /* the batch kernels read job->xu */
  const char *batch_name; /* what reports name the batch path */
} mq_linear_kernels;

/* Longest run dot_u8s8 takes: 32768 * 255 * 128 < 2^31, so int32 partial sums cannot overflow. */
#define MQ_LINEAR_STATIC_BLOCK 32768

/* Each file provides its table (the SIMD ones only when compiled for x86-64). */
extern const mq_linear_kernels mq_linear_kernels_portable;
extern const mq_linear_kernels mq_linear_kernels_avx2;
extern const mq_linear_kernels mq_linear_kernels_avx512_vnni;
extern const mq_linear_kernels mq_linear_kernels_amx;          /* real AMX-INT8 tiles */
extern const mq_linear_kernels mq_linear_kernels_amx_emulated; /* the same kernel, tiles in C */

/*! mq_linear_active() : the kernel table picked in cpu.c (best available, or the override). */
const mq_linear_kernels *mq_linear_active(void);

/*! mq_linear_gemm_min_batch() : the batch from which `kern`'s batch kernels run: its measured
 *  batch_min_m, unless mq_linear_set_gemm_min_batch overrode it (cpu.c). */
int64_t mq_linear_gemm_min_batch(const mq_linear_kernels *kern);

/*! mq_linear_tile_chunk() : how the dynamic and static drivers share `tiles` output tiles of
 *  `macs_per_tile` multiply-adds (batch of m rows) among up to num_threads threads: sets *parts
 *  (threads to wake; 1 for small jobs) and returns the chunk of tiles a thread claims at a time
 *  (about 8 per thread, so a preempted thread holds up little; even for m > 1, since the
 *  batched passes pair tiles inside a chunk). */
int64_t mq_linear_tile_chunk(int64_t tiles, int64_t macs_per_tile, int64_t m, int num_threads, int *parts);

/* ---- helpers shared by every path ------------------------------------------------------- */

static inline int64_t mq_linear_round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

/* Store y[0..rows) (rows <= 16) into out row `m`, columns n0.., converting to out_dtype. */
static inline void mq_linear_store_rows(const mq_linear_job *job, int64_t m, int64_t n0,
                                        const float *y, int64_t rows) {
  const int64_t base = m * job->n + n0;
  for (int64_t r = 0; r < rows; r++) mq_store_f32(job->out, job->out_dtype, base + r, y[r]);
}

/* Rows of tile t of an n-row weight that are real (the last tile may be partial). */
static inline int64_t mq_linear_rows_in_tile(int64_t n, int64_t t) {
  const int64_t left = n - t * MQ_LINEAR_NR;
  return left < MQ_LINEAR_NR ? left : MQ_LINEAR_NR;
}

static inline int64_t mq_linear_tile_rows(const mq_linear_job *job, int64_t t) {
  return mq_linear_rows_in_tile(job->n, t);
}

#endif /* MQ_LINEAR_H */
