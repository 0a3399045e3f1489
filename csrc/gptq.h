/*
 * gptq.h : the inner loops of the GPTQ kernels (gptq.c), shared by the files that compile them
 * for each ISA level (gptq.c: baseline; gptq_avx2.c, gptq_avx512.c: with their flags).  Like
 * linear.h it holds only types, declarations and static inline code, so no out-of-line
 * function is ever compiled with the wrong flags.  The contracts are in mono_quant.h.
 *
 * Every loop here is written so that the compiler vectorises across independent outputs
 * (never across a sum), and the build forbids contracting a * b + c into a fused multiply-add
 * (-ffp-contract=off): each ISA's table computes the same bits as the portable one.  The one
 * explicit fused multiply-add is in the Hessian, where the product of two float32 values is
 * exact in double, so fusing it changes no bit.
 */
#ifndef MQ_GPTQ_H
#define MQ_GPTQ_H

#include <math.h>
#include <stdint.h>

#include "mono_quant.h"

/* s += a * b in double; a and b hold float32 values, so a * b is exact and the fused form is
 * the same number, one instruction where the ISA has it. */
#if defined(__FMA__)
#define MQ_GPTQ_MADD(s, a, b) ((s) = fma((a), (b), (s)))
#else
#define MQ_GPTQ_MADD(s, a, b) ((s) += (a) * (b))
#endif

/* Columns per Hessian panel: the counted rows of x are repacked (as double) in panels of 8. */
#define MQ_GPTQ_PANEL 8
/* Rows of the weight that one pass of the GPTQ column loop carries together. */
#define MQ_GPTQ_ROWS 4
/* Columns of the lazy-update tile held in registers. */
#define MQ_GPTQ_LAZY_COLS 16

/* One ISA's inner loops. */
typedef struct {
  const char *name;
  /* acc[s][t] = sum_r a[r * 8 + s] * b[r * 8 + t] over r = 0..m-1 in order, in double
   * (s < hessian_rows, t < 8): a tile of x^T x from two panels (a already offset to its
   * first column).  Each element is the same ordered sum whatever the tile's height, so the
   * height is the ISA's choice: enough independent accumulators to hide the multiply-add
   * latency (4 rows = 8 vectors of 4 doubles on AVX2; 8 rows = 8 vectors of 8 on AVX-512). */
  int hessian_rows;
  void (*hessian_tile)(const double *a, const double *b, int64_t m, double (*acc)[8]);
  /* acc[r][j] = acc[r][j] + d[r][b] * v[b][j] for b = 0..nb-1 in order (float32, each
   * product and sum rounded), rows r < rows (<= MQ_GPTQ_ROWS), columns j in [j0, j1). */
  void (*lazy_update)(float *acc, int64_t lda, int rows, const float *d, int64_t ldd,
                      const float *v, int64_t ldv, int64_t nb, int64_t j0, int64_t j1);
} mq_gptq_kernels;

extern const mq_gptq_kernels mq_gptq_kernels_portable;
#if defined(__x86_64__)
extern const mq_gptq_kernels mq_gptq_kernels_avx2;
extern const mq_gptq_kernels mq_gptq_kernels_avx512;
#endif

/* The table in use (cpu.c): the best this CPU runs, or the one mq_gptq_set_isa forced. */
const mq_gptq_kernels *mq_gptq_active(void);

/* ---- the loops, compiled once per ISA file ------------------------------------------------ */

static inline void mq_gptq_hessian_tile4_impl(const double *restrict a, const double *restrict b,
                                              int64_t m, double (*acc)[8]) {
  double s0[8] = {0}, s1[8] = {0}, s2[8] = {0}, s3[8] = {0};
  for (int64_t r = 0; r < m; r++) {
    const double *ar = a + r * MQ_GPTQ_PANEL, *br = b + r * MQ_GPTQ_PANEL;
    const double a0 = ar[0], a1 = ar[1], a2 = ar[2], a3 = ar[3];
    /* float x float is exact in double, so only the sums round: any ISA, same bits */
    for (int t = 0; t < 8; t++) {
      MQ_GPTQ_MADD(s0[t], a0, br[t]);
      MQ_GPTQ_MADD(s1[t], a1, br[t]);
      MQ_GPTQ_MADD(s2[t], a2, br[t]);
      MQ_GPTQ_MADD(s3[t], a3, br[t]);
    }
  }
  for (int t = 0; t < 8; t++) {
    acc[0][t] = s0[t];
    acc[1][t] = s1[t];
    acc[2][t] = s2[t];
    acc[3][t] = s3[t];
  }
}

/* Eight rows: the whole panel of a against one of b (AVX-512: eight accumulators of 8). */
static inline void mq_gptq_hessian_tile8_impl(const double *restrict a, const double *restrict b,
                                              int64_t m, double (*acc)[8]) {
  double s0[8] = {0}, s1[8] = {0}, s2[8] = {0}, s3[8] = {0};
  double s4[8] = {0}, s5[8] = {0}, s6[8] = {0}, s7[8] = {0};
  for (int64_t r = 0; r < m; r++) {
    const double *ar = a + r * MQ_GPTQ_PANEL, *br = b + r * MQ_GPTQ_PANEL;
    const double a0 = ar[0], a1 = ar[1], a2 = ar[2], a3 = ar[3];
    const double a4 = ar[4], a5 = ar[5], a6 = ar[6], a7 = ar[7];
    for (int t = 0; t < 8; t++) {
      MQ_GPTQ_MADD(s0[t], a0, br[t]);
      MQ_GPTQ_MADD(s1[t], a1, br[t]);
      MQ_GPTQ_MADD(s2[t], a2, br[t]);
      MQ_GPTQ_MADD(s3[t], a3, br[t]);
      MQ_GPTQ_MADD(s4[t], a4, br[t]);
      MQ_GPTQ_MADD(s5[t], a5, br[t]);
      MQ_GPTQ_MADD(s6[t], a6, br[t]);
      MQ_GPTQ_MADD(s7[t], a7, br[t]);
    }
  }
  for (int t = 0; t < 8; t++) {
    acc[0][t] = s0[t];
    acc[1][t] = s1[t];
    acc[2][t] = s2[t];
    acc[3][t] = s3[t];
    acc[4][t] = s4[t];
    acc[5][t] = s5[t];
    acc[6][t] = s6[t];
    acc[7][t] = s7[t];
  }
}

/* Four rows at once: each load of v serves all of them. */
static inline void mq_gptq_lazy4(float *restrict a0, float *restrict a1, float *restrict a2,
                                 float *restrict a3, const float *restrict d0,
                                 const float *restrict d1, const float *restrict d2,
                                 const float *restrict d3, const float *restrict v, int64_t ldv,
                                 int64_t nb, int64_t j0, int64_t j1) {
  int64_t j = j0;
  for (; j + MQ_GPTQ_LAZY_COLS <= j1; j += MQ_GPTQ_LAZY_COLS) {
    float s0[MQ_GPTQ_LAZY_COLS], s1[MQ_GPTQ_LAZY_COLS], s2[MQ_GPTQ_LAZY_COLS], s3[MQ_GPTQ_LAZY_COLS];
    for (int t = 0; t < MQ_GPTQ_LAZY_COLS; t++) {
      s0[t] = a0[j + t];
      s1[t] = a1[j + t];
      s2[t] = a2[j + t];
      s3[t] = a3[j + t];
    }
    for (int64_t b = 0; b < nb; b++) {
      const float *vb = v + b * ldv + j;
      const float x0 = d0[b], x1 = d1[b], x2 = d2[b], x3 = d3[b];
      for (int t = 0; t < MQ_GPTQ_LAZY_COLS; t++) {
        s0[t] = s0[t] + x0 * vb[t];
        s1[t] = s1[t] + x1 * vb[t];
        s2[t] = s2[t] + x2 * vb[t];
        s3[t] = s3[t] + x3 * vb[t];
      }
    }
    for (int t = 0; t < MQ_GPTQ_LAZY_COLS; t++) {
      a0[j + t] = s0[t];
      a1[j + t] = s1[t];
      a2[j + t] = s2[t];
      a3[j + t] = s3[t];
    }
  }
  for (; j < j1; j++) {
    float s0 = a0[j], s1 = a1[j], s2 = a2[j], s3 = a3[j];
    for (int64_t b = 0; b < nb; b++) {
      const float vb = v[b * ldv + j];
      s0 = s0 + d0[b] * vb;
      s1 = s1 + d1[b] * vb;
      s2 = s2 + d2[b] * vb;
      s3 = s3 + d3[b] * vb;
    }
    a0[j] = s0;
    a1[j] = s1;
    a2[j] = s2;
    a3[j] = s3;
  }
}

static inline void mq_gptq_lazy1(float *restrict a0, const float *restrict d0,
                                 const float *restrict v, int64_t ldv, int64_t nb, int64_t j0,
                                 int64_t j1) {
  int64_t j = j0;
  for (; j + MQ_GPTQ_LAZY_COLS <= j1; j += MQ_GPTQ_LAZY_COLS) {
    float s0[MQ_GPTQ_LAZY_COLS];
    for (int t = 0; t < MQ_GPTQ_LAZY_COLS; t++) s0[t] = a0[j + t];
    for (int64_t b = 0; b < nb; b++) {
      const float *vb = v + b * ldv + j;
      const float x0 = d0[b];
      for (int t = 0; t < MQ_GPTQ_LAZY_COLS; t++) s0[t] = s0[t] + x0 * vb[t];
    }
    for (int t = 0; t < MQ_GPTQ_LAZY_COLS; t++) a0[j + t] = s0[t];
  }
  for (; j < j1; j++) {
    float s0 = a0[j];
    for (int64_t b = 0; b < nb; b++) s0 = s0 + d0[b] * v[b * ldv + j];
    a0[j] = s0;
  }
}

static inline void mq_gptq_lazy_update_impl(float *acc, int64_t lda, int rows, const float *d,
                                            int64_t ldd, const float *v, int64_t ldv, int64_t nb,
                                            int64_t j0, int64_t j1) {
  if (rows == MQ_GPTQ_ROWS) {
    mq_gptq_lazy4(acc, acc + lda, acc + 2 * lda, acc + 3 * lda, d, d + ldd, d + 2 * ldd, d + 3 * ldd,
                  v, ldv, nb, j0, j1);
    return;
  }
  for (int r = 0; r < rows; r++) mq_gptq_lazy1(acc + r * lda, d + r * ldd, v, ldv, nb, j0, j1);
}

/* The table of one ISA file: `static` wrappers around the inline loops above; tile_rows:
 * the Hessian tile's height, 4 or 8. */
#define MQ_GPTQ_DEFINE_KERNELS(table, isa_name, tile_rows)                                            \
  static void table##_hessian_tile(const double *a, const double *b, int64_t m, double (*acc)[8]) {\
    mq_gptq_hessian_tile##tile_rows##_impl(a, b, m, acc);                                         \
  }                                                                                               \
  static void table##_lazy_update(float *acc, int64_t lda, int rows, const float *d, int64_t ldd,  \
                                  const float *v, int64_t ldv, int64_t nb, int64_t j0,           \
                                  int64_t j1) {                                                   \
    mq_gptq_lazy_update_impl(acc, lda, rows, d, ldd, v, ldv, nb, j0, j1);                         \
  }                                                                                               \
  const mq_gptq_kernels table = {isa_name, tile_rows, table##_hessian_tile, table##_lazy_update}

#endif /* MQ_GPTQ_H */
