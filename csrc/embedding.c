/* embedding.c : INT8 embedding tables quantized per row: gather (nn.Embedding) and bags
 * (nn.EmbeddingBag), dequantizing only the rows looked up (contracts in mono_quant.h). */
#include <stdatomic.h>

#include "convert.h"
#include "mono_quant.h"
#include "threadpool.h"

/* Output values per thread below which waking workers costs more than the work. */
#define MQ_EMBEDDING_MIN_ELEMS_PER_THREAD 32768
/* Bags accumulate a stripe of this many columns at a time in a stack buffer: no allocation,
 * and the stripe stays in L1 while the bag's rows stream past. */
#define MQ_EMBEDDING_STRIPE 256

typedef struct {
  const void *q;
  mq_dtype q_dtype;
  const float *scale;
  const int32_t *zero_point;
  int64_t dim;
  const int64_t *idx;
  const int64_t *offsets;
  const float *weights; /* per_sample_weights or NULL */
  int64_t padding_idx;  /* -1: none */
  mq_embedding_mode mode;
  void *out;
  mq_dtype out_dtype;
} embedding_job;

/* Row r's values, columns [c0, c0 + len), as float32: (q - zero_point) * scale, the float32
 * product of two exactly represented values (one rounding, as the torch twin computes it). */
static inline void dequantize_stripe(const embedding_job *job, int64_t r, int64_t c0, int64_t len,
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

static inline void store_stripe(const embedding_job *job, int64_t row, int64_t c0, int64_t len,
                                const float *restrict src) {
  const int64_t base = row * job->dim + c0;
  if (job->out_dtype == MQ_F32) {
    float *restrict dst = (float *)job->out + base;
    for (int64_t i = 0; i < len; i++) dst[i] = src[i];
    return;
  }
  for (int64_t i = 0; i < len; i++) mq_store_f32(job->out, job->out_dtype, base + i, src[i]);
}

static void gather_rows(void *ctx, int64_t begin, int64_t end) {
  const embedding_job *job = ctx;
  float stripe[MQ_EMBEDDING_STRIPE];
  for (int64_t i = begin; i < end; i++) {
    const int64_t r = job->idx[i];
    if (job->out_dtype == MQ_F32) { /* straight into the output row */
      dequantize_stripe(job, r, 0, job->dim, (float *)job->out + i * job->dim);
      continue;
    }
    for (int64_t c0 = 0; c0 < job->dim; c0 += MQ_EMBEDDING_STRIPE) {
      const int64_t len = job->dim - c0 < MQ_EMBEDDING_STRIPE ? job->dim - c0 : MQ_EMBEDDING_STRIPE;
      dequantize_stripe(job, r, c0, len, stripe);
      store_stripe(job, i, c0, len, stripe);
    }
  }
}

/* One stripe of bag b: the reduction over its rows in index order (sum / mean / max). */
static void reduce_stripe(const embedding_job *job, int64_t b, int64_t c0, int64_t len, float *restrict acc) {
  float row[MQ_EMBEDDING_STRIPE];
  int64_t count = 0;
  for (int64_t i = 0; i < len; i++) acc[i] = 0.0f;
  for (int64_t j = job->offsets[b]; j < job->offsets[b + 1]; j++) {
    const int64_t r = job->idx[j];
    if (r == job->padding_idx) continue;
    dequantize_stripe(job, r, c0, len, row);
    if (job->mode == MQ_EMBEDDING_MAX) {
      if (count == 0) {
        for (int64_t i = 0; i < len; i++) acc[i] = row[i];
      } else {
        for (int64_t i = 0; i < len; i++) acc[i] = row[i] > acc[i] ? row[i] : acc[i];
      }
    } else if (job->weights != NULL) {
      const float w = job->weights[j];
      for (int64_t i = 0; i < len; i++) acc[i] = acc[i] + row[i] * w;
    } else {
      for (int64_t i = 0; i < len; i++) acc[i] = acc[i] + row[i];
    }
    count++;
  }
  if (job->mode == MQ_EMBEDDING_MEAN && count > 0) {
    const float n = (float)count;
    for (int64_t i = 0; i < len; i++) acc[i] = acc[i] / n;
  }
}

static void reduce_bags(void *ctx, int64_t begin, int64_t end) {
  const embedding_job *job = ctx;
  float acc[MQ_EMBEDDING_STRIPE];
  for (int64_t b = begin; b < end; b++) {
    for (int64_t c0 = 0; c0 < job->dim; c0 += MQ_EMBEDDING_STRIPE) {
      const int64_t len = job->dim - c0 < MQ_EMBEDDING_STRIPE ? job->dim - c0 : MQ_EMBEDDING_STRIPE;
      reduce_stripe(job, b, c0, len, acc);
      store_stripe(job, b, c0, len, acc);
    }
  }
}

static mq_status check_table(mq_dtype q_dtype, int64_t rows, int64_t dim, mq_dtype out_dtype) {
  if ((q_dtype != MQ_I8 && q_dtype != MQ_U8) || !mq_is_float_dtype(out_dtype)) return MQ_ERR_DTYPE;
  if (rows < 1 || dim < 1) return MQ_ERR_SHAPE;
  return MQ_OK;
}

/* Every index in [0, rows): checked before anything is read through it or written. */
static mq_status check_indices(const int64_t *idx, int64_t n, int64_t rows) {
  if (n < 0) return MQ_ERR_SHAPE;
  int bad = 0;
  for (int64_t i = 0; i < n; i++) bad |= (uint64_t)idx[i] >= (uint64_t)rows;
  return bad ? MQ_ERR_INDEX : MQ_OK;
}

static int64_t min_items_per_thread(int64_t dim) {
  const int64_t items = MQ_EMBEDDING_MIN_ELEMS_PER_THREAD / dim;
  return items > 0 ? items : 1;
}

mq_status mq_embedding_int8_gather(const void *q, mq_dtype q_dtype, const float *scale,
                                   const int32_t *zero_point, int64_t rows, int64_t dim,
                                   const int64_t *idx, int64_t n, void *out, mq_dtype out_dtype,
                                   int num_threads) {
  mq_status st = check_table(q_dtype, rows, dim, out_dtype);
  if (st == MQ_OK) st = check_indices(idx, n, rows);
  if (st != MQ_OK) return st;
  embedding_job job = {q, q_dtype, scale, zero_point, dim, idx, NULL, NULL, -1, MQ_EMBEDDING_SUM,
                       out, out_dtype};
  mq_parallel_for(n, min_items_per_thread(dim), 1, num_threads, gather_rows, &job);
  return MQ_OK;
}

mq_status mq_embedding_int8_bag(const void *q, mq_dtype q_dtype, const float *scale,
                                const int32_t *zero_point, int64_t rows, int64_t dim,
                                const int64_t *idx, int64_t n, const int64_t *offsets, int64_t bags,
                                const float *per_sample_weights, mq_embedding_mode mode,
                                int64_t padding_idx, void *out, mq_dtype out_dtype, int num_threads) {
  mq_status st = check_table(q_dtype, rows, dim, out_dtype);
  if (st != MQ_OK) return st;
  if (bags < 0) return MQ_ERR_SHAPE;
  if (mode != MQ_EMBEDDING_SUM && mode != MQ_EMBEDDING_MEAN && mode != MQ_EMBEDDING_MAX) return MQ_ERR_ARG;
  if (per_sample_weights != NULL && mode != MQ_EMBEDDING_SUM) return MQ_ERR_ARG;
  if (padding_idx < -1 || padding_idx >= rows) return MQ_ERR_ARG;
  if (offsets[0] < 0 || offsets[bags] > n) return MQ_ERR_ARG;
  for (int64_t b = 0; b < bags; b++)
    if (offsets[b + 1] < offsets[b]) return MQ_ERR_ARG;
  /* Only the indices inside a bag are read; they are the ones that must be in range. */
  st = check_indices(idx + offsets[0], offsets[bags] - offsets[0], rows);
  if (st != MQ_OK) return st;
  embedding_job job = {q, q_dtype, scale, zero_point, dim, idx, offsets, per_sample_weights,
                       padding_idx, mode, out, out_dtype};
  const int64_t per_bag = bags > 0 ? (offsets[bags] - offsets[0]) / bags + 1 : 1;
  mq_parallel_for(bags, min_items_per_thread(dim * per_bag), 1, num_threads, reduce_bags, &job);
  return MQ_OK;
}
