/*
 * gptq.h : the inner loops of the GPTQ kernels (gptq.c), shared by the files that compile them
 * for each ISA level (gptq.c: baseline; gptq_avx2.c, gptq_avx512.c: with their flags).  Like
 * linear.h it holds only types, declarations and static inline code, so no out-of-line
 * function is ever compiled with the wrong flags.  The contracts are in mono_quant.h.
 *
 * Every loop here is written so that the compiler vectorises across independent outputs
 * (never across a sum), and the build forbids contracting a * b + c into a fused multiply-add
 * (-ffp-contract=off): each ISA's table computes the same bits as the portable one.
 */
#ifndef MQ_GPTQ_H
#define MQ_GPTQ_H

#include <stdint.h>

#include "mono_quant.h"

/* Columns per Hessian panel: the counted rows of x are repacked (as double) in panels of 8. */
#define MQ_GPTQ_PANEL 8
/* Rows of w that one pass of the GPTQ column loop carries together. */
#define MQ_GPTQ_ROWS 4
/* Columns of the lazy-update tile held in registers. */
#define MQ_GPTQ_LAZY_COLS 16

/* One ISA's inner loops. */
typedef struct {
  const char *name;
  /* acc[s][t] = sum_r a[r * 8 + s] * b[r * 8 + t] over r = 0..m-1 in order, in double
   * (s < 4, t < 8): a tile of x^T x from two panels (a already offset to its 4 columns). */
  void (*hessian_tile)(const double *a, const double *b, int64_t m, double acc[4][8]);
  /* w[r][j] = w[r][j] - e[r][b] * u[b][j] for b = 0..nb-1 in order (float32, each product
   * and difference rounded), rows r < rows (<= MQ_GPTQ_ROWS), columns j in [j0, j1). */
  void (*lazy_update)(float *w, int64_t ldw, int rows, const float *e, int64_t lde,
                      const float *u, int64_t ldu, int64_t nb, int64_t j0, int64_t j1);
} mq_gptq_kernels;

extern const mq_gptq_kernels mq_gptq_kernels_portable;
#if defined(__x86_64__)
extern const mq_gptq_kernels mq_gptq_kernels_avx2;
extern const mq_gptq_kernels mq_gptq_kernels_avx512;
#endif

/* The table in use (cpu.c): the best this CPU runs, or the one mq_gptq_set_isa forced. */
const mq_gptq_kernels *mq_gptq_active(void);

/* ---- the loops, compiled once per ISA file ------------------------------------------------ */

static inline void mq_gptq_hessian_tile_impl(const double *restrict a, const double *restrict b,
                                             int64_t m, double acc[4][8]) {
  double s0[8] = {0}, s1[8] = {0}, s2[8] = {0}, s3[8] = {0};
  for (int64_t r = 0; r < m; r++) {
    const double *ar = a + r * MQ_GPTQ_PANEL, *br = b + r * MQ_GPTQ_PANEL;
    const double a0 = ar[0], a1 = ar[1], a2 = ar[2], a3 = ar[3];
    /* float x float is exact in double, so only the sums round: any ISA, same bits */
    for (int t = 0; t < 8; t++) {
      s0[t] += a0 * br[t];
      s1[t] += a1 * br[t];
      s2[t] += a2 * br[t];
      s3[t] += a3 * br[t];
    }
  }
  for (int t = 0; t < 8; t++) {
    acc[0][t] = s0[t];
    acc[1][t] = s1[t];
    acc[2][t] = s2[t];
    acc[3][t] = s3[t];
  }
}

/* Four rows at once: each load of u serves all of them. */
static inline void mq_gptq_lazy4(float *restrict w0, float *restrict w1, float *restrict w2,
                                 float *restrict w3, const float *restrict e0,
                                 const float *restrict e1, const float *restrict e2,
                                 const float *restrict e3, const float *restrict u, int64_t ldu,
                                 int64_t nb, int64_t j0, int64_t j1) {
  int64_t j = j0;
  for (; j + MQ_GPTQ_LAZY_COLS <= j1; j += MQ_GPTQ_LAZY_COLS) {
    float a0[MQ_GPTQ_LAZY_COLS], a1[MQ_GPTQ_LAZY_COLS], a2[MQ_GPTQ_LAZY_COLS], a3[MQ_GPTQ_LAZY_COLS];
    for (int t = 0; t < MQ_GPTQ_LAZY_COLS; t++) {
      a0[t] = w0[j + t];
      a1[t] = w1[j + t];
      a2[t] = w2[j + t];
      a3[t] = w3[j + t];
    }
    for (int64_t b = 0; b < nb; b++) {
      const float *ub = u + b * ldu + j;
      const float x0 = e0[b], x1 = e1[b], x2 = e2[b], x3 = e3[b];
      for (int t = 0; t < MQ_GPTQ_LAZY_COLS; t++) {
        a0[t] = a0[t] - x0 * ub[t];
        a1[t] = a1[t] - x1 * ub[t];
        a2[t] = a2[t] - x2 * ub[t];
        a3[t] = a3[t] - x3 * ub[t];
      }
    }
    for (int t = 0; t < MQ_GPTQ_LAZY_COLS; t++) {
      w0[j + t] = a0[t];
      w1[j + t] = a1[t];
      w2[j + t] = a2[t];
      w3[j + t] = a3[t];
    }
  }
  for (; j < j1; j++) {
    float a0 = w0[j], a1 = w1[j], a2 = w2[j], a3 = w3[j];
    for (int64_t b = 0; b < nb; b++) {
      const float ub = u[b * ldu + j];
      a0 = a0 - e0[b] * ub;
      a1 = a1 - e1[b] * ub;
      a2 = a2 - e2[b] * ub;
      a3 = a3 - e3[b] * ub;
    }
    w0[j] = a0;
    w1[j] = a1;
    w2[j] = a2;
    w3[j] = a3;
  }
}

static inline void mq_gptq_lazy1(float *restrict w0, const float *restrict e0,
                                 const float *restrict u, int64_t ldu, int64_t nb, int64_t j0,
                                 int64_t j1) {
  int64_t j = j0;
  for (; j + MQ_GPTQ_LAZY_COLS <= j1; j += MQ_GPTQ_LAZY_COLS) {
    float a0[MQ_GPTQ_LAZY_COLS];
    for (int t = 0; t < MQ_GPTQ_LAZY_COLS; t++) a0[t] = w0[j + t];
    for (int64_t b = 0; b < nb; b++) {
      const float *ub = u + b * ldu + j;
      const float x0 = e0[b];
      for (int t = 0; t < MQ_GPTQ_LAZY_COLS; t++) a0[t] = a0[t] - x0 * ub[t];
    }
    for (int t = 0; t < MQ_GPTQ_LAZY_COLS; t++) w0[j + t] = a0[t];
  }
  for (; j < j1; j++) {
    float a0 = w0[j];
    for (int64_t b = 0; b < nb; b++) a0 = a0 - e0[b] * u[b * ldu + j];
    w0[j] = a0;
  }
}

static inline void mq_gptq_lazy_update_impl(float *w, int64_t ldw, int rows, const float *e,
                                            int64_t lde, const float *u, int64_t ldu, int64_t nb,
                                            int64_t j0, int64_t j1) {
  if (rows == MQ_GPTQ_ROWS) {
    mq_gptq_lazy4(w, w + ldw, w + 2 * ldw, w + 3 * ldw, e, e + lde, e + 2 * lde, e + 3 * lde, u,
                  ldu, nb, j0, j1);
    return;
  }
  for (int r = 0; r < rows; r++) mq_gptq_lazy1(w + r * ldw, e + r * lde, u, ldu, nb, j0, j1);
}

/* The table of one ISA file: `static` wrappers around the inline loops above. */
#define MQ_GPTQ_DEFINE_KERNELS(table, isa_name)                                                   \
  static void table##_hessian_tile(const double *a, const double *b, int64_t m, double acc[4][8]) {\
    mq_gptq_hessian_tile_impl(a, b, m, acc);                                                      \
  }                                                                                               \
  static void table##_lazy_update(float *w, int64_t ldw, int rows, const float *e, int64_t lde,   \
                                  const float *u, int64_t ldu, int64_t nb, int64_t j0,           \
                                  int64_t j1) {                                                   \
    mq_gptq_lazy_update_impl(w, ldw, rows, e, lde, u, ldu, nb, j0, j1);                           \
  }                                                                                               \
  const mq_gptq_kernels table = {isa_name, table##_hessian_tile, table##_lazy_update}

#endif /* MQ_GPTQ_H */
