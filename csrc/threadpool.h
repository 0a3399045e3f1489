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

/*! mq_parallel_chunks() :
 *  Runs fn(ctx, begin, end) over [0, n) in chunks of `chunk` items (the last may be shorter)
 *  that up to `parts` threads, the caller included, claim from a shared counter: a thread the
 *  OS preempts holds up one chunk, not a fixed share.  Every chunk is run whole by one thread,
 *  so a kernel whose chunks write disjoint outputs gets the same results whoever runs them. */
void mq_parallel_chunks(int64_t n, int64_t chunk, int parts, mq_range_fn fn, void *ctx);

/*! mq_threadpool_kind() : "libgomp" when jobs run on the OpenMP team torch uses (libgomp
 *  found in the process), "own" when they run on mono_quant's pool. */
const char *mq_threadpool_kind(void);

/*! mq_parallel_parts() : how many ranges mq_parallel_for would use for these arguments. */
int mq_parallel_parts(int64_t n, int64_t min_per_thread, int64_t align, int num_threads);

/*! mq_parallel_range() : bounds of range `part` of `parts` over [0, n) aligned to `align`. */
void mq_parallel_range(int64_t n, int parts, int64_t align, int part, int64_t *begin, int64_t *end);

/* ---- backing off under load ---------------------------------------------------------------
 * A parallel job whose caller waited for the helpers (to start, or to finish after it ran out
 * of ranges) longer than work / MQ_BACKOFF_WAIT_DIVISOR + MQ_BACKOFF_WAIT_SLACK_NS (work: the
 * caller's own time running ranges) was contended: a helper had no core.  The jobs that start in
 * the next `backoff` nanoseconds run on the caller alone; the back-off quadruples (up to
 * MQ_BACKOFF_MAX_NS) each time the first parallel job after it is contended again, and is
 * shortened by an eighth (down to MQ_BACKOFF_MIN_NS) by each parallel job that is not.  On a quiet machine a helper holds the
 * caller up by at most one chunk of work plus a wake-up, below the threshold. */
#define MQ_BACKOFF_WAIT_DIVISOR 4
#define MQ_BACKOFF_WAIT_SLACK_NS 100000      /* 0.1 ms */
/* After MQ_BACKOFF_IDLE_NS without a parallel job the helpers have gone to sleep (libgomp's
 * spin lasts ~3 ms at most), and waking one takes up to a few hundred microseconds even on a
 * quiet machine: such a job may wait MQ_BACKOFF_WAKE_SLACK_NS more before it counts as
 * contended.  A probe under load still waits a scheduler slice, several milliseconds. */
#define MQ_BACKOFF_IDLE_NS 1000000           /* 1 ms */
#define MQ_BACKOFF_WAKE_SLACK_NS 1000000     /* 1 ms */
#define MQ_BACKOFF_MIN_NS 500000             /* 0.5 ms */
#define MQ_BACKOFF_MAX_NS 256000000          /* 0.256 s between probes at most */

typedef struct {
  int64_t serial_until_ns; /* jobs starting before this run on the caller alone */
  int64_t backoff_ns;      /* the next back-off */
  int contended;           /* the job just noted was contended */
} mq_backoff;

/*! mq_backoff_step() : the back-off state after a parallel job that the caller started at
 *  start_ns, whose caller began its first range at began_ns (starting a team can wait for a
 *  helper too: libgomp docks its threads at a barrier), ran out of ranges at done_ns and
 *  returned at end_ns (CLOCK_MONOTONIC), idle_ns after the previous parallel job ended.
 *  Waiting: (began - start) + (end - done); work: done - began. */
mq_backoff mq_backoff_step(mq_backoff state, int64_t start_ns, int64_t began_ns, int64_t done_ns,
                           int64_t end_ns, int64_t idle_ns);

/*! mq_threadpool_set_backoff() : turn backing off on (the default) or off (as does the
 *  environment variable MONO_QUANT_LOAD_BACKOFF=0); while off, jobs neither wait out a
 *  back-off nor update it. */
void mq_threadpool_set_backoff(int enabled);
int mq_threadpool_backoff_enabled(void);

/*! mq_threadpool_back_off_for() : back off for the next `ns` nanoseconds as if a job had been
 *  contended (a test hook: the jobs in that time run on the caller alone). */
void mq_threadpool_back_off_for(int64_t ns);

typedef struct {
  int64_t parallel_jobs;         /* jobs run on several threads */
  int64_t serial_under_load;     /* jobs run on the caller alone while backing off */
  int64_t contended_jobs;        /* parallel jobs found contended */
} mq_threadpool_stats;

/*! mq_threadpool_get_stats() : counters since the module was loaded. */
mq_threadpool_stats mq_threadpool_get_stats(void);

#endif /* MQ_THREADPOOL_H */
