/* metrics.c : reductions used by observers and accuracy reports (min/max, SQNR). */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "convert.h"
#include "mono_quant.h"
#include "threadpool.h"

#define MQ_MINMAX_MIN_ELEMS_PER_THREAD 32768
#define MQ_SQNR_CHUNK 4096

/* ---- per-channel min / max ------------------------------------------------------------- */
typedef struct {
  const void *x;
  mq_dtype dtype;
  int64_t outer, channels, inner;
  float *out_min, *out_max;
  atomic_int nonfinite;
} minmax_job;

/* min/max of `len` contiguous elements from offset `start`; 0 if one is NaN or Inf */
static int reduce_run(const void *x, mq_dtype dtype, int64_t start, int64_t len, float *lo, float *hi) {
  float l = *lo, h = *hi;
  int finite = 1;
#define MQ_REDUCE_LOOP(LOAD)                  \
  for (int64_t j = 0; j < len; j++) {          \
    const float v = LOAD;                      \
    finite &= isfinite(v) != 0;                \
    l = v < l ? v : l;                         \
    h = v > h ? v : h;                         \
  }
  if (dtype == MQ_F32) {
    const float *p = (const float *)x + start;
    MQ_REDUCE_LOOP(p[j])
  } else if (dtype == MQ_F16) {
    const uint16_t *p = (const uint16_t *)x + start;
    MQ_REDUCE_LOOP(mq_f16_to_f32(p[j]))
  } else {
    const uint16_t *p = (const uint16_t *)x + start;
    MQ_REDUCE_LOOP(mq_bf16_to_f32(p[j]))
  }
#undef MQ_REDUCE_LOOP
  *lo = l + 0.0f; /* + 0.0f turns -0.0 into +0.0: which zero wins a comparison is unspecified */
  *hi = h + 0.0f;
  return finite;
}

/* min/max of channel c over the flat (outer, inner) index range [begin, end) */
static int reduce_span(const minmax_job *job, int64_t c, int64_t begin, int64_t end, float *mn,
                       float *mx) {
  float lo = INFINITY, hi = -INFINITY;
  int finite = 1;
  int64_t j = begin;
  while (j < end && finite) {
    const int64_t o = j / job->inner, i = j % job->inner;
    const int64_t run = (job->inner - i) < (end - j) ? (job->inner - i) : (end - j);
    finite = reduce_run(job->x, job->dtype, (o * job->channels + c) * job->inner + i, run, &lo, &hi);
    j += run;
  }
  *mn = lo;
  *mx = hi;
  return finite;
}

static void minmax_channels(void *ctx, int64_t c_begin, int64_t c_end) {
  minmax_job *job = ctx;
  const int64_t per_channel = job->outer * job->inner;
  for (int64_t c = c_begin; c < c_end; c++) {
    if (!reduce_span(job, c, 0, per_channel, &job->out_min[c], &job->out_max[c])) {
      atomic_store(&job->nonfinite, 1);
      return;
    }
  }
}

/* One channel split across threads: each range writes its own slot, combined afterwards. */
typedef struct {
  minmax_job *job;
  int parts;
  int64_t n;
  float part_min[256], part_max[256];
} single_channel_job;

static void minmax_one_channel(void *ctx, int64_t part_begin, int64_t part_end) {
  single_channel_job *sj = ctx;
  for (int64_t p = part_begin; p < part_end; p++) {
    int64_t b, e;
    mq_parallel_range(sj->n, sj->parts, 1, (int)p, &b, &e);
    if (!reduce_span(sj->job, 0, b, e, &sj->part_min[p], &sj->part_max[p]))
      atomic_store(&sj->job->nonfinite, 1);
  }
}

mq_status mq_minmax(const void *x, mq_dtype dtype, int64_t outer, int64_t channels, int64_t inner,
                    float *out_min, float *out_max, int num_threads) {
  if (!mq_is_float_dtype(dtype)) return MQ_ERR_DTYPE;
  if (outer <= 0 || channels <= 0 || inner <= 0) return MQ_ERR_SHAPE;
  minmax_job job = {x, dtype, outer, channels, inner, out_min, out_max, 0};
  const int64_t per_channel = outer * inner;
  if (channels == 1) {
    single_channel_job sj = {.job = &job, .n = per_channel};
    sj.parts = mq_parallel_parts(per_channel, MQ_MINMAX_MIN_ELEMS_PER_THREAD, 1,
                                 num_threads < 256 ? num_threads : 256);
    mq_parallel_for(sj.parts, 1, 1, sj.parts, minmax_one_channel, &sj);
    if (atomic_load(&job.nonfinite)) return MQ_ERR_NONFINITE;
    float lo = sj.part_min[0], hi = sj.part_max[0];
    for (int p = 1; p < sj.parts; p++) {
      lo = sj.part_min[p] < lo ? sj.part_min[p] : lo;
      hi = sj.part_max[p] > hi ? sj.part_max[p] : hi;
    }
    out_min[0] = lo;
    out_max[0] = hi;
    return MQ_OK;
  }
  int64_t min_channels = MQ_MINMAX_MIN_ELEMS_PER_THREAD / per_channel;
  mq_parallel_for(channels, min_channels > 0 ? min_channels : 1, 1, num_threads, minmax_channels, &job);
  return atomic_load(&job.nonfinite) ? MQ_ERR_NONFINITE : MQ_OK;
}

/* ---- SQNR ------------------------------------------------------------------------------ */
typedef struct {
  const void *x, *y;
  mq_dtype x_dtype, y_dtype;
  int64_t n;
  double *signal, *noise; /* one slot per chunk */
  atomic_int nonfinite;
} sqnr_job;

static void sqnr_chunks(void *ctx, int64_t chunk_begin, int64_t chunk_end) {
  sqnr_job *job = ctx;
  for (int64_t k = chunk_begin; k < chunk_end; k++) {
    const int64_t b = k * MQ_SQNR_CHUNK;
    const int64_t e = b + MQ_SQNR_CHUNK < job->n ? b + MQ_SQNR_CHUNK : job->n;
    double s = 0.0, d = 0.0;
    for (int64_t i = b; i < e; i++) {
      const double xv = mq_load_f32(job->x, job->x_dtype, i);
      const double yv = mq_load_f32(job->y, job->y_dtype, i);
      if (!isfinite(xv) || !isfinite(yv)) {
        atomic_store(&job->nonfinite, 1);
        return;
      }
      s += xv * xv;
      d += (xv - yv) * (xv - yv);
    }
    job->signal[k] = s;
    job->noise[k] = d;
  }
}

mq_status mq_sqnr(const void *x, mq_dtype x_dtype, const void *y, mq_dtype y_dtype, int64_t n,
                  double *out_db, int num_threads) {
  if (!mq_is_float_dtype(x_dtype) || !mq_is_float_dtype(y_dtype)) return MQ_ERR_DTYPE;
  if (n < 0) return MQ_ERR_SHAPE;
  const int64_t chunks = (n + MQ_SQNR_CHUNK - 1) / MQ_SQNR_CHUNK;
  double *partial = malloc(sizeof(double) * 2 * (size_t)(chunks > 0 ? chunks : 1));
  if (!partial) return MQ_ERR_NOMEM;
  sqnr_job job = {x, y, x_dtype, y_dtype, n, partial, partial + chunks, 0};
  mq_parallel_for(chunks, 16, 1, num_threads, sqnr_chunks, &job);
  if (atomic_load(&job.nonfinite)) {
    free(partial);
    return MQ_ERR_NONFINITE;
  }
  double signal = 0.0, noise = 0.0;
  for (int64_t k = 0; k < chunks; k++) {
    signal += job.signal[k];
    noise += job.noise[k];
  }
  free(partial);
  if (noise == 0.0)
    *out_db = INFINITY;
  else if (signal == 0.0)
    *out_db = -INFINITY;
  else
    *out_db = 10.0 * log10(signal / noise);
  return MQ_OK;
}

/* ---- histogram (static quantization observers) ------------------------------------------ */
#define MQ_HIST_MIN_ELEMS_PER_THREAD 65536
#define MQ_HIST_MAX_PARTS 64
#define MQ_HIST_MAX_BINS (1 << 24) /* bins - 1 must be exact in float32 */

typedef struct {
  const void *x;
  mq_dtype dtype;
  int64_t n, bins;
  int parts;
  float lo, step, last;
  int64_t *part_counts; /* parts x bins, one private row per range */
  atomic_int nonfinite;
} histogram_job;

/* Bin of every element of a float32 run, counted into `counts`; 0 if one is NaN or Inf. */
static int histogram_run(const float *restrict v, int64_t len, float lo, float step, float last,
                         int64_t *restrict counts) {
  int finite = 1;
  for (int64_t j = 0; j < len; j++) {
    finite &= isfinite(v[j]) != 0;
    float t = floorf((v[j] - lo) * step);
    t = fminf(fmaxf(t, 0.0f), last); /* also maps the +-Inf of an overflowing v - lo */
    counts[(int64_t)t]++;
  }
  return finite;
}

static void histogram_parts(void *ctx, int64_t part_begin, int64_t part_end) {
  histogram_job *job = ctx;
  float buf[1024]; /* F16 / BF16 are converted to float32 a slice at a time */
  for (int64_t p = part_begin; p < part_end; p++) {
    int64_t b, e;
    mq_parallel_range(job->n, job->parts, 1, (int)p, &b, &e);
    int64_t *counts = job->part_counts + p * job->bins;
    for (int64_t i = 0; i < job->bins; i++) counts[i] = 0;
    for (int64_t i = b; i < e; i += 1024) {
      const int64_t len = e - i < 1024 ? e - i : 1024;
      const float *run = (const float *)job->x + i;
      if (job->dtype != MQ_F32) {
        mq_row_to_f32((const uint16_t *)job->x + i, job->dtype, len, buf);
        run = buf;
      }
      if (!histogram_run(run, len, job->lo, job->step, job->last, counts)) {
        atomic_store(&job->nonfinite, 1);
        return;
      }
    }
  }
}

mq_status mq_histogram(const void *x, mq_dtype dtype, int64_t n, float lo, float hi, int64_t bins,
                       int64_t *counts, int num_threads) {
  if (!mq_is_float_dtype(dtype)) return MQ_ERR_DTYPE;
  if (n < 0) return MQ_ERR_SHAPE;
  if (bins < 1 || bins > MQ_HIST_MAX_BINS || !isfinite(lo) || !(lo < hi) || !isfinite(hi - lo))
    return MQ_ERR_ARG;
  const float step = (float)bins / (hi - lo);
  if (!isfinite(step)) return MQ_ERR_ARG;
  histogram_job job = {x, dtype, n, bins, 1, lo, step, (float)(bins - 1), NULL, 0};
  job.parts = mq_parallel_parts(n, MQ_HIST_MIN_ELEMS_PER_THREAD, 1,
                                num_threads < MQ_HIST_MAX_PARTS ? num_threads : MQ_HIST_MAX_PARTS);
  job.part_counts = malloc(sizeof(int64_t) * (size_t)bins * (size_t)job.parts);
  if (!job.part_counts) return MQ_ERR_NOMEM;
  mq_parallel_for(job.parts, 1, 1, job.parts, histogram_parts, &job);
  if (atomic_load(&job.nonfinite)) {
    free(job.part_counts);
    return MQ_ERR_NONFINITE;
  }
  for (int64_t i = 0; i < bins; i++) {
    int64_t total = 0;
    for (int p = 0; p < job.parts; p++) total += job.part_counts[p * bins + i];
    counts[i] = total;
  }
  free(job.part_counts);
  return MQ_OK;
}
