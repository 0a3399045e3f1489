/*
 * threadpool.h : a persistent pool of worker threads for the kernels.
 *
 * mq_parallel_for splits [0, n) into `parts` contiguous ranges, runs them on the calling
 * thread and on helper threads, and returns when all are done.  The helpers are torch's own
 * OpenMP team when libgomp is loaded in the process (so the kernels use exactly the threads
 * torch uses, already awake, never a second set competing for the cores), else a persistent
 * pool of mono_quant's own.  Range boundaries depend only on (n, parts, align), never on
 * timing, and each range is run by exactly one thread: a kernel whose ranges write disjoint
 * outputs is deterministic.
 */
#ifndef MQ_THREADPOOL_H
#define MQ_THREADPOOL_H

#include <stdint.h>

#include "mono_quant.h"

typedef void (*mq_range_fn)(void *ctx, int64_t begin, int64_t end);

/*! mq_parallel_for() :
 *  Runs fn(ctx, begin, end) over [0, n) in at most `num_threads` ranges, each at least
 *  `min_per_thread` items (so small problems stay on the calling thread).  Range boundaries
 *  are multiples of `align` (>= 1), except the final end == n.
 *  It cannot fail: when the pool is busy (another Python thread is inside a kernel) or a
 *  worker cannot be started, the work runs in fewer ranges, down to one on the calling
 *  thread.  Kernels whose ranges write disjoint outputs get the same results either way. */
void mq_parallel_for(int64_t n, int64_t min_per_thread, int64_t align, int num_threads,
                          mq_range_fn fn, void *ctx);

/*! mq_threadpool_kind() : "libgomp" when jobs run on the OpenMP team torch uses (libgomp
 *  found in the process), "own" when they run on mono_quant's pool. */
const char *mq_threadpool_kind(void);

/*! mq_parallel_parts() : how many ranges mq_parallel_for would use for these arguments. */
int mq_parallel_parts(int64_t n, int64_t min_per_thread, int64_t align, int num_threads);

/*! mq_parallel_range() : bounds of range `part` of `parts` over [0, n) aligned to `align`. */
void mq_parallel_range(int64_t n, int parts, int64_t align, int part, int64_t *begin, int64_t *end);

#endif /* MQ_THREADPOOL_H */
