/* embedding.c : INT8 embedding tables quantized per row: gather (nn.Embedding) and bags
 * (nn.EmbeddingBag), dequantizing only the rows looked up (contracts in mono_quant.h).  The
 * argument checks and the split over threads live here; the loops are embedding.h's, run from
 * the table cpu.c picks (this file's portable one, or embedding_avx2.c / embedding_avx512.c). */
#include "embedding.h"
#include "threadpool.h"

MQ_EMBEDDING_DEFINE_KERNELS(mq_embedding_kernels_portable, "portable");

/* Output values per thread below which waking workers costs more than the work. */
#define MQ_EMBEDDING_MIN_ELEMS_PER_THREAD 32768

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
  embedding_job job = {q, q_dtype, scale, zero_point, dim, idx, NULL, 0, NULL, -1, MQ_EMBEDDING_SUM,
                       out, out_dtype};
  mq_parallel_for(n, min_items_per_thread(dim), 1, num_threads, mq_embedding_active()->gather_rows, &job);
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
  embedding_job job = {q, q_dtype, scale, zero_point, dim, idx, offsets, offsets[bags], per_sample_weights,
                       padding_idx, mode, out, out_dtype};
  const int64_t per_bag = bags > 0 ? (offsets[bags] - offsets[0]) / bags + 1 : 1;
  mq_parallel_for(bags, min_items_per_thread(dim * per_bag), 1, num_threads, mq_embedding_active()->reduce_bags,
                  &job);
  return MQ_OK;
}
