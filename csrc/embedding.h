/*
 * embedding.h : the per-row INT8 embedding loops (gather and bags) as static inline code, the
 * job a call hands them, and the dispatch table type.  Included by files compiled with
 * different ISA flags (embedding.c: portable; embedding_avx2.c, embedding_avx512.c): each
 * compiles the same loops for its ISA, so every path computes the same bits (integer
 * differences, one float32 product per value, float32 sums in index order, no fused
 * multiply-add: -ffp-contract=off), the wider ones faster.  cpu.c picks one at run time.
 */
#ifndef MQ_EMBEDDING_H
#define MQ_EMBEDDING_H

#include <stdint.h>

#include "convert.h"
#include "mono_quant.h"

/* Bags accumulate a stripe of this many columns at a time in a stack buffer: no allocation,
 * and the stripe stays in L1 while the bag's rows stream past. */
#define MQ_EMBEDDING_STRIPE 1024

/* Rows are looked up in random order from tables larger than the caches (MiniLM's word table:
 * 30522 x 384, 11.7 MB): asking for the row MQ_EMBEDDING_PREFETCH lookups ahead keeps several
 * misses in flight instead of one.  A hint only: results are unchanged. */
#define MQ_EMBEDDING_PREFETCH 4
#if defined(__GNUC__) || defined(__clang__)
#define MQ_PREFETCH(p) __builtin_prefetch((p), 0, 0)
#else
#define MQ_PREFETCH(p) ((void)(p))
#endif

typedef struct {
  const void *q;
  mq_dtype q_dtype;
  const float *scale;
  const int32_t *zero_point;
  int64_t dim;
  const int64_t *idx;
  const int64_t *offsets;
  int64_t last; /* offsets[bags]: every index before it was checked, so any may be prefetched */
  const float *weights; /* per_sample_weights or NULL */
  int64_t padding_idx;  /* -1: none */
  mq_embedding_mode mode;
  void *out;
  mq_dtype out_dtype;
} embedding_job;

/* Row r's values, columns [c0, c0 + len), as float32: (q - zero_point) * scale, the float32
 * product of two exactly represented values (one rounding, as the torch twin computes it). */
static inline void mq_embedding_dequantize_stripe(const embedding_job *job, int64_t r, int64_t c0, int64_t len,
                                                  float *restrict dst) {
  const float s = job->scale[r];
  const int32_t zp = job->zero_point[r];
  const size_t base = (size_t)r * (size_t)job->dim + (size_t)c0;
  if (job->q_dtype == MQ_I8) {
    const int8_t *restrict src = (const int8_t *)job->q + base;
    for (int64_t i = 0; i < len; i++) dst[i] = (float)((int32_t)src[i] - zp) * s;
  } else {
    const uint8_t *restrict src = (const uint8_t *)job->q + base;
    for (int64_t i = 0; i < len; i++) dst[i] = (float)((int32_t)src[i] - zp) * s;
  }
}

static inline void mq_embedding_store_stripe(const embedding_job *job, int64_t row, int64_t c0, int64_t len,
                                             const float *restrict src) {
  const int64_t base = row * job->dim + c0;
  if (job->out_dtype == MQ_F32) {
    float *restrict dst = (float *)job->out + base;
    for (int64_t i = 0; i < len; i++) dst[i] = src[i];
    return;
  }
  for (int64_t i = 0; i < len; i++) mq_store_f32(job->out, job->out_dtype, base + i, src[i]);
}

/* Ask for the cache lines of columns [c0, c0 + len) of row r. */
static inline void mq_embedding_prefetch_row(const embedding_job *job, int64_t r, int64_t c0, int64_t len) {
  const char *p = (const char *)job->q + (size_t)r * (size_t)job->dim + (size_t)c0;
  for (int64_t i = 0; i < len; i += 64) MQ_PREFETCH(p + i);
}

static inline void mq_embedding_gather_rows(void *ctx, int64_t begin, int64_t end) {
  const embedding_job *job = ctx;
  float stripe[MQ_EMBEDDING_STRIPE];
  for (int64_t i = begin; i < end; i++) {
    const int64_t r = job->idx[i];
    if (i + MQ_EMBEDDING_PREFETCH < end)
      mq_embedding_prefetch_row(job, job->idx[i + MQ_EMBEDDING_PREFETCH], 0, job->dim);
    if (job->out_dtype == MQ_F32) { /* straight into the output row */
      mq_embedding_dequantize_stripe(job, r, 0, job->dim, (float *)job->out + i * job->dim);
      continue;
    }
    for (int64_t c0 = 0; c0 < job->dim; c0 += MQ_EMBEDDING_STRIPE) {
      const int64_t len = job->dim - c0 < MQ_EMBEDDING_STRIPE ? job->dim - c0 : MQ_EMBEDDING_STRIPE;
      mq_embedding_dequantize_stripe(job, r, c0, len, stripe);
      mq_embedding_store_stripe(job, i, c0, len, stripe);
    }
  }
}

/* acc[i] = acc[i] + value (* w): the row's float32 values (one product each, as
 * dequantize_stripe computes them) added in place, without a row buffer.  A macro so that the
 * int8 and uint8 loops each get a tight, vectorizable body. */
#define MQ_ACCUMULATE(T)                                                                    \
  do {                                                                                      \
    const T *restrict src = (const T *)job->q + base;                                       \
    if (weights == NULL) {                                                                  \
      for (int64_t i = 0; i < len; i++) acc[i] = acc[i] + (float)((int32_t)src[i] - zp) * s; \
    } else {                                                                                \
      const float w = weights[j];                                                           \
      for (int64_t i = 0; i < len; i++)                                                     \
        acc[i] = acc[i] + ((float)((int32_t)src[i] - zp) * s) * w;                          \
    }                                                                                       \
  } while (0)

/* One stripe of bag b: the reduction over its rows in index order (sum / mean / max). */
static inline void mq_embedding_reduce_stripe(const embedding_job *job, int64_t b, int64_t c0, int64_t len,
                                              float *restrict acc) {
  float row[MQ_EMBEDDING_STRIPE];
  const float *weights = job->weights;
  int64_t count = 0;
  for (int64_t i = 0; i < len; i++) acc[i] = 0.0f;
  const int64_t end = job->offsets[b + 1];
  for (int64_t j = job->offsets[b]; j < end; j++) {
    const int64_t r = job->idx[j];
    if (j + MQ_EMBEDDING_PREFETCH < job->last)
      mq_embedding_prefetch_row(job, job->idx[j + MQ_EMBEDDING_PREFETCH], c0, len);
    if (r == job->padding_idx) continue;
    if (job->mode == MQ_EMBEDDING_MAX) {
      mq_embedding_dequantize_stripe(job, r, c0, len, count == 0 ? acc : row);
      if (count > 0)
        for (int64_t i = 0; i < len; i++) acc[i] = row[i] > acc[i] ? row[i] : acc[i];
    } else {
      const float s = job->scale[r];
      const int32_t zp = job->zero_point[r];
      const size_t base = (size_t)r * (size_t)job->dim + (size_t)c0;
      if (job->q_dtype == MQ_I8)
        MQ_ACCUMULATE(int8_t);
      else
        MQ_ACCUMULATE(uint8_t);
    }
    count++;
  }
  if (job->mode == MQ_EMBEDDING_MEAN && count > 0) {
    const float n = (float)count;
    for (int64_t i = 0; i < len; i++) acc[i] = acc[i] / n;
  }
}

static inline void mq_embedding_reduce_bags(void *ctx, int64_t begin, int64_t end) {
  const embedding_job *job = ctx;
  float acc[MQ_EMBEDDING_STRIPE];
  for (int64_t b = begin; b < end; b++) {
    for (int64_t c0 = 0; c0 < job->dim; c0 += MQ_EMBEDDING_STRIPE) {
      const int64_t len = job->dim - c0 < MQ_EMBEDDING_STRIPE ? job->dim - c0 : MQ_EMBEDDING_STRIPE;
      mq_embedding_reduce_stripe(job, b, c0, len, acc);
      mq_embedding_store_stripe(job, b, c0, len, acc);
    }
  }
}

/* One ISA's loops: fn(ctx = an embedding_job, begin, end) over output rows / bags. */
typedef struct {
  const char *name;
  void (*gather_rows)(void *ctx, int64_t begin, int64_t end);
  void (*reduce_bags)(void *ctx, int64_t begin, int64_t end);
} mq_embedding_kernels;

/* Defines the table `table` ("name") from the inline loops, compiled with the file's flags. */
#define MQ_EMBEDDING_DEFINE_KERNELS(table, isa_name)                                              \
  static void table##_gather_rows(void *ctx, int64_t b, int64_t e) { mq_embedding_gather_rows(ctx, b, e); } \
  static void table##_reduce_bags(void *ctx, int64_t b, int64_t e) { mq_embedding_reduce_bags(ctx, b, e); } \
  const mq_embedding_kernels table = {isa_name, table##_gather_rows, table##_reduce_bags}

extern const mq_embedding_kernels mq_embedding_kernels_portable;
#if defined(__x86_64__)
extern const mq_embedding_kernels mq_embedding_kernels_avx2;
extern const mq_embedding_kernels mq_embedding_kernels_avx512;
#endif

/* The active table (cpu.c): the best this CPU runs, unless mq_embedding_set_isa forced one. */
const mq_embedding_kernels *mq_embedding_active(void);

#endif /* MQ_EMBEDDING_H */
