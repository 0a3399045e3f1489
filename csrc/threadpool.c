/*
 * threadpool.c : persistent workers so a kernel call costs a wake-up, not a thread start.
 * A matrix-vector product on a 4096x4096 INT4 layer takes ~0.1 ms; creating threads per call
 * would cost a good part of that.  Workers spin briefly after a job (the next layer's call is
 * usually microseconds away), then sleep on a condition variable.
 *
 * This file holds the only mutable global state of the library besides the CPU-feature
 * cache: the pool itself.
 */
#define _GNU_SOURCE
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#define MQ_MAX_WORKERS 255
#define MQ_SPIN_ITERATIONS 20000

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#else
static inline void cpu_relax(void) {}
#endif

typedef struct {
  pthread_mutex_t dispatch; /* held by the one caller that owns the pool for a job */
  pthread_mutex_t lock;     /* guards sleeping and waking */
  pthread_cond_t wake;
  pthread_cond_t done;
  int workers; /* started so far */
  pthread_t threads[MQ_MAX_WORKERS];
  /* the job: written by the owner before it hands out tickets */
  mq_range_fn fn;
  void *ctx;
  int64_t n, align;
  int parts;
  atomic_uint ticket[MQ_MAX_WORKERS]; /* bumped for each worker that has a range to run */
  atomic_int remaining;
} mq_pool;

static mq_pool pool = {
    .dispatch = PTHREAD_MUTEX_INITIALIZER,
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .done = PTHREAD_COND_INITIALIZER,
};
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

int mq_parallel_parts(int64_t n, int64_t min_per_thread, int64_t align, int num_threads) {
  if (n <= 0 || num_threads <= 1) return 1;
  if (align < 1) align = 1;
  if (min_per_thread < 1) min_per_thread = 1;
  int64_t units = (n + align - 1) / align;
  int64_t by_size = n / min_per_thread;
  int64_t parts = num_threads;
  if (parts > MQ_MAX_WORKERS + 1) parts = MQ_MAX_WORKERS + 1;
  if (parts > by_size) parts = by_size;
  if (parts > units) parts = units;
  return parts < 1 ? 1 : (int)parts;
}

void mq_parallel_range(int64_t n, int parts, int64_t align, int part, int64_t *begin, int64_t *end) {
  if (align < 1) align = 1;
  int64_t units = (n + align - 1) / align;
  int64_t b = units * part / parts * align;
  int64_t e = units * (part + 1) / parts * align;
  *begin = b < n ? b : n;
  *end = (part == parts - 1 || e > n) ? n : e;
}

static void run_part(int part) {
  int64_t b, e;
  mq_parallel_range(pool.n, pool.parts, pool.align, part, &b, &e);
  if (b < e) pool.fn(pool.ctx, b, e);
}

/* Worker i runs range i + 1 of each job whose owner bumped ticket[i].  Only workers with a
 * range get a ticket, and the owner waits for all of them before it rewrites the job, so a
 * worker never reads the fields of a job it is not part of. */
static void *worker_main(void *arg) {
  int index = (int)(intptr_t)arg;
  atomic_uint *ticket = &pool.ticket[index];
  unsigned seen = 0; /* ensure_workers zeroed the ticket before starting us */
  for (;;) {
    unsigned now;
    int spins = 0;
    while ((now = atomic_load(ticket)) == seen && spins < MQ_SPIN_ITERATIONS) {
      cpu_relax();
      spins++;
    }
    if (now == seen) {
      pthread_mutex_lock(&pool.lock);
      while ((now = atomic_load(ticket)) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
      pthread_mutex_unlock(&pool.lock);
    }
    seen = now;
    run_part(index + 1);
    if (atomic_fetch_sub(&pool.remaining, 1) == 1) {
      pthread_mutex_lock(&pool.lock);
      pthread_cond_signal(&pool.done);
      pthread_mutex_unlock(&pool.lock);
    }
  }
  return NULL;
}

/* A forked child has none of the parent's workers: start from an empty pool. */
static void reset_after_fork(void) {
  pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t fresh_cond = PTHREAD_COND_INITIALIZER;
  pool.dispatch = fresh;
  pool.lock = fresh;
  pool.wake = fresh_cond;
  pool.done = fresh_cond;
  pool.workers = 0;
}

static void install_atfork(void) { pthread_atfork(NULL, NULL, reset_after_fork); }

static int ensure_workers(int wanted) {
  while (pool.workers < wanted) {
    atomic_store(&pool.ticket[pool.workers], 0u);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&pool.threads[pool.workers], &attr, worker_main,
                            (void *)(intptr_t)pool.workers);
    pthread_attr_destroy(&attr);
    if (rc != 0) break;
    pool.workers++;
  }
  return pool.workers;
}

static void run_serial(int64_t n, mq_range_fn fn, void *ctx) {
  if (n > 0) fn(ctx, 0, n);
}

void mq_parallel_for(int64_t n, int64_t min_per_thread, int64_t align, int num_threads,
                     mq_range_fn fn, void *ctx) {
  int parts = mq_parallel_parts(n, min_per_thread, align, num_threads);
  if (parts <= 1) {
    run_serial(n, fn, ctx);
    return;
  }
  pthread_once(&atfork_once, install_atfork);
  if (pthread_mutex_trylock(&pool.dispatch) != 0) {
    run_serial(n, fn, ctx); /* the pool is in use by another caller */
    return;
  }
  int have = ensure_workers(parts - 1);
  if (have < parts - 1) parts = have + 1; /* fewer workers: fewer, larger ranges */
  if (parts <= 1) {
    pthread_mutex_unlock(&pool.dispatch);
    run_serial(n, fn, ctx);
    return;
  }
  pool.fn = fn;
  pool.ctx = ctx;
  pool.n = n;
  pool.align = align < 1 ? 1 : align;
  pool.parts = parts;
  atomic_store(&pool.remaining, parts - 1);
  pthread_mutex_lock(&pool.lock);
  for (int i = 0; i < parts - 1; i++) atomic_fetch_add(&pool.ticket[i], 1u);
  pthread_cond_broadcast(&pool.wake);
  pthread_mutex_unlock(&pool.lock);

  run_part(0);

  int spins = 0;
  while (atomic_load(&pool.remaining) > 0 && spins < MQ_SPIN_ITERATIONS) {
    cpu_relax();
    spins++;
  }
  if (atomic_load(&pool.remaining) > 0) {
    pthread_mutex_lock(&pool.lock);
    while (atomic_load(&pool.remaining) > 0) pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
  }
  pthread_mutex_unlock(&pool.dispatch);
}
