/*
 * threadpool.c : persistent workers so a kernel call costs a wake-up, not a thread start.
 * A matrix-vector product on a 4096x4096 INT4 layer takes ~0.1 ms; creating threads per call
 * would cost a good part of that.
 *
 * The calling thread never waits for a worker that has not started: the ranges of a job are
 * claimed from a shared counter by whoever comes first, the caller included.  Torch's own
 * OpenMP threads spin on the cores for a while after each torch op, so a woken worker of ours
 * may not get a core for a long time; the caller then simply runs every range itself.  For
 * the same reason workers spin only briefly after a job before they sleep: a longer spin
 * would hold a core that the next torch op needs.
 *
 * Under load (another process busy on the cores) a parallel job can cost far more than the
 * same job on the calling thread alone: the caller ends at a barrier waiting for a helper
 * that the OS has not given a core, for a whole scheduler slice (milliseconds, against a
 * 0.2 ms job).  So every parallel job measures how long its caller waited after running out
 * of work, and a long wait makes the next jobs run on the caller alone for a while (backing
 * off, quadrupled while probes keep waiting, shortened by an eighth by each job that does not); see
 * mq_backoff_step in threadpool.h.  On a quiet machine helpers arrive within a chunk of
 * work, nothing is ever backed off, and jobs run exactly as before.
 *
 * This file holds the only mutable global state of the library besides the CPU-feature
 * cache: the pool itself and its back-off state.
 */
#define _GNU_SOURCE
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__linux__)
#include <dlfcn.h>
#include <link.h>
#define MQ_CAN_SHARE_GOMP 1
#else
#define MQ_CAN_SHARE_GOMP 0
#endif

#define MQ_MAX_WORKERS 255
/* About 20-50 us of pause instructions: long enough to catch the next layer's call in a
 * tight loop, short enough to hand the core back to torch's threads between layers. */
#define MQ_SPIN_ITERATIONS 2000
/* Waiting for a range another thread has started: yield the core after this many spins. */
#define MQ_WAIT_SPINS_BEFORE_YIELD 4000

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
  int workers; /* started so far */
  pthread_t threads[MQ_MAX_WORKERS];
  /* The job: written by the owner before it publishes the job's generation in `claim`. */
  mq_range_fn fn;
  void *ctx;
  int64_t n, align;
  int parts;
  /* generation << 32 | next unclaimed range.  A claim succeeds only while the generation is
   * the current job's, and a job cannot finish with a range unclaimed, so a late worker never
   * runs a range of a job that has returned, nor reads the fields of the next one before
   * they are written. */
  _Atomic uint64_t claim;
  atomic_uint generation; /* the latest job's generation, what idle workers watch */
  atomic_int finished;    /* ranges of the current job that have run to the end */
  atomic_int sleeping;    /* workers waiting on `wake` */
} mq_pool;

static mq_pool pool = {
    .dispatch = PTHREAD_MUTEX_INITIALIZER,
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
};
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
#if MQ_CAN_SHARE_GOMP
/* The process that loaded the module.  A forked child (getpid() differs) must not use
 * libgomp's team: GNU OpenMP does not survive fork (its pool still lists the parent's
 * threads), even when the parent forked before any kernel of ours ran. */
static pid_t loaded_pid;
__attribute__((constructor)) static void note_loaded_pid(void) { loaded_pid = getpid(); }
static int in_forked_child(void) { return getpid() != loaded_pid; }
#endif

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

/* Claim and run ranges of job `gen` until none is left.  Used by workers and the caller. */
static void run_claimed_parts(uint32_t gen) {
  for (;;) {
    uint64_t v = atomic_load(&pool.claim);
    if ((uint32_t)(v >> 32) != gen) return;
    const uint32_t part = (uint32_t)v;
    if ((int64_t)part >= (int64_t)pool.parts) return;
    if (!atomic_compare_exchange_weak(&pool.claim, &v, v + 1)) continue;
    /* Claimed: job `gen` cannot finish before this range does, so its fields stay valid. */
    int64_t b, e;
    mq_parallel_range(pool.n, pool.parts, pool.align, (int)part, &b, &e);
    if (b < e) pool.fn(pool.ctx, b, e);
    atomic_fetch_add(&pool.finished, 1);
  }
}

static void *worker_main(void *arg) {
  (void)arg;
  unsigned seen = atomic_load(&pool.generation);
  for (;;) {
    unsigned now;
    int spins = 0;
    while ((now = atomic_load(&pool.generation)) == seen && spins < MQ_SPIN_ITERATIONS) {
      cpu_relax();
      spins++;
    }
    if (now == seen) {
      pthread_mutex_lock(&pool.lock);
      atomic_fetch_add(&pool.sleeping, 1);
      while ((now = atomic_load(&pool.generation)) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
      atomic_fetch_sub(&pool.sleeping, 1);
      pthread_mutex_unlock(&pool.lock);
    }
    seen = now;
    run_claimed_parts(now);
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
  pool.workers = 0;
  atomic_store(&pool.sleeping, 0);
}

static void install_atfork(void) { pthread_atfork(NULL, NULL, reset_after_fork); }

static int ensure_workers(int wanted) {
  while (pool.workers < wanted) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&pool.threads[pool.workers], &attr, worker_main, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) break;
    pool.workers++;
  }
  return pool.workers;
}

static int64_t now_ns(void);

static void run_serial(int64_t n, mq_range_fn fn, void *ctx) {
  if (n > 0) fn(ctx, 0, n);
}


/* ---- sharing torch's OpenMP team ---------------------------------------------------------
 * Torch on Linux runs its ops on GNU OpenMP (libgomp, loaded with libtorch).  Its threads
 * spin for a while after every torch op, so between two torch ops a second pool (ours) finds
 * the cores taken.  When libgomp is already in the process, a job runs on libgomp's team
 * instead (GOMP_parallel, the entry point `#pragma omp parallel` compiles to, stable since
 * GCC 4.9): the same threads torch uses, already awake, and no oversubscription.  The
 * ranges are still claimed from a counter, so the results do not change.  A forked child
 * falls back to the pool above (libgomp's team does not survive fork), and so does anything
 * that finds no libgomp (macOS, torch built with another threading library, or
 * MONO_QUANT_THREADPOOL=own). */
#if MQ_CAN_SHARE_GOMP
typedef void (*mq_gomp_parallel_fn)(void (*fn)(void *), void *data, unsigned num_threads,
                                    unsigned flags);
static mq_gomp_parallel_fn gomp_parallel; /* set once by find_gomp, NULL if none */
static pthread_once_t gomp_once = PTHREAD_ONCE_INIT;

static int note_gomp_path(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  const char *name = info->dlpi_name;
  if (!name || !*name) return 0;
  const char *base = strrchr(name, '/');
  base = base ? base + 1 : name;
  if (strncmp(base, "libgomp", 7) != 0) return 0;
  char *path = data;
  strncpy(path, name, 4095);
  path[4095] = 0;
  return 1;
}

static void find_gomp(void) {
  const char *choice = getenv("MONO_QUANT_THREADPOOL");
  if (choice && strcmp(choice, "own") == 0) return;
  char path[4096] = "";
  dl_iterate_phdr(note_gomp_path, path);
  if (!path[0]) return;
  /* RTLD_NOLOAD: only a library that is already loaded; the handle is kept, so it stays. */
  void *handle = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
  if (!handle) return;
  void *sym = dlsym(handle, "GOMP_parallel");
  if (!sym) {
    dlclose(handle);
    return;
  }
  memcpy(&gomp_parallel, &sym, sizeof sym);
}

typedef struct {
  mq_range_fn fn;
  void *ctx;
  int64_t n, align;
  int parts;
  atomic_int next;
  pthread_t caller;
  int64_t *caller_times; /* NULL: not measured; else [0] when the caller began its ranges
                          * (after libgomp started the team) and [1] when it found none left */
} gomp_job;

static void gomp_body(void *data) {
  gomp_job *job = data;
  const int timed = job->caller_times && pthread_equal(pthread_self(), job->caller);
  if (timed) job->caller_times[0] = now_ns();
  int part;
  while ((part = atomic_fetch_add(&job->next, 1)) < job->parts) {
    int64_t b, e;
    mq_parallel_range(job->n, job->parts, job->align, part, &b, &e);
    if (b < e) job->fn(job->ctx, b, e);
  }
  if (timed) job->caller_times[1] = now_ns();
}

/* Run the job on libgomp's team; 0 when there is none to use. */
static int run_on_gomp(int64_t n, int64_t align, int parts, mq_range_fn fn, void *ctx,
                       int64_t *caller_times) {
  pthread_once(&gomp_once, find_gomp);
  if (!gomp_parallel || in_forked_child()) return 0;
  gomp_job job = {fn, ctx, n, align < 1 ? 1 : align, parts, 0, pthread_self(), caller_times};
  gomp_parallel(gomp_body, &job, (unsigned)parts, 0);
  return 1;
}

const char *mq_threadpool_kind(void) {
  pthread_once(&gomp_once, find_gomp);
  return gomp_parallel && !in_forked_child() ? "libgomp" : "own";
}
#else
static int run_on_gomp(int64_t n, int64_t align, int parts, mq_range_fn fn, void *ctx,
                       int64_t *caller_times) {
  (void)n, (void)align, (void)parts, (void)fn, (void)ctx, (void)caller_times;
  return 0;
}

const char *mq_threadpool_kind(void) { return "own"; }
#endif

/* ---- backing off under load ------------------------------------------------------------ */

mq_backoff mq_backoff_step(mq_backoff state, int64_t start_ns, int64_t began_ns, int64_t done_ns,
                           int64_t end_ns, int64_t idle_ns) {
  const int64_t work = done_ns - began_ns, wait = (began_ns - start_ns) + (end_ns - done_ns);
  const int64_t slack = idle_ns >= MQ_BACKOFF_IDLE_NS ? MQ_BACKOFF_WAKE_SLACK_NS : MQ_BACKOFF_WAIT_SLACK_NS;
  if (wait > work / MQ_BACKOFF_WAIT_DIVISOR + slack) {
    state.serial_until_ns = end_ns + state.backoff_ns;
    /* x4: a load that has come stays for a while, and each probe under it costs a slice */
    state.backoff_ns = state.backoff_ns * 4 > MQ_BACKOFF_MAX_NS ? MQ_BACKOFF_MAX_NS : state.backoff_ns * 4;
    state.contended = 1;
  } else {
    /* Shortened by an eighth, not reset: under load some probes find a helper on time, and a
     * reset (or even halving) would keep the back-off short, i.e. probe and wait again and
     * again.  A machine that has gone quiet does not wait for this decay: the first clean
     * probe sets no back-off, so every job after it runs in parallel. */
    const int64_t shorter = state.backoff_ns - state.backoff_ns / 8;
    state.backoff_ns = shorter < MQ_BACKOFF_MIN_NS ? MQ_BACKOFF_MIN_NS : shorter;
    state.contended = 0;
  }
  return state;
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Shared by every calling thread; a lost update between two concurrent callers only shifts
 * when the next probe happens. */
static _Atomic int64_t serial_until_ns;
static _Atomic int64_t backoff_ns = MQ_BACKOFF_MIN_NS;
static atomic_int backoff_enabled = -1; /* -1: not read from the environment yet */
static _Atomic int64_t stat_parallel, stat_serial_under_load, stat_contended;

static int backoff_on(void) {
  int on = atomic_load(&backoff_enabled);
  if (on < 0) {
    const char *env = getenv("MONO_QUANT_LOAD_BACKOFF");
    on = !(env && strcmp(env, "0") == 0);
    atomic_store(&backoff_enabled, on);
  }
  return on;
}

void mq_threadpool_set_backoff(int enabled) {
  /* The state is kept: turned on again, the pool remembers the load it last saw. */
  atomic_store(&backoff_enabled, enabled ? 1 : 0);
}

int mq_threadpool_backoff_enabled(void) { return backoff_on(); }

void mq_threadpool_back_off_for(int64_t ns) {
  atomic_store(&serial_until_ns, now_ns() + (ns > 0 ? ns : 0));
}

mq_threadpool_stats mq_threadpool_get_stats(void) {
  mq_threadpool_stats st = {atomic_load(&stat_parallel), atomic_load(&stat_serial_under_load),
                            atomic_load(&stat_contended)};
  return st;
}

static _Atomic int64_t last_parallel_end_ns;

static void note_job(int64_t start, int64_t began, int64_t done, int64_t end) {
  atomic_fetch_add(&stat_parallel, 1);
  mq_backoff state = {atomic_load(&serial_until_ns), atomic_load(&backoff_ns), 0};
  const int64_t idle = start - atomic_exchange(&last_parallel_end_ns, end);
  state = mq_backoff_step(state, start, began, done, end, idle);
  atomic_store(&backoff_ns, state.backoff_ns);
  if (state.contended) {
    atomic_store(&serial_until_ns, state.serial_until_ns);
    atomic_fetch_add(&stat_contended, 1);
  }
}

void mq_parallel_for(int64_t n, int64_t min_per_thread, int64_t align, int num_threads,
                     mq_range_fn fn, void *ctx) {
  int parts = mq_parallel_parts(n, min_per_thread, align, num_threads);
  if (parts <= 1) {
    run_serial(n, fn, ctx);
    return;
  }
  const int measured = backoff_on();
  const int64_t start = measured ? now_ns() : 0;
  if (measured && start < atomic_load(&serial_until_ns)) {
    atomic_fetch_add(&stat_serial_under_load, 1);
    run_serial(n, fn, ctx);
    return;
  }
  pthread_once(&atfork_once, install_atfork);
  int64_t times[2] = {start, start};
  if (run_on_gomp(n, align, parts, fn, ctx, measured ? times : NULL)) {
    if (measured) note_job(start, times[0], times[1], now_ns());
    return;
  }
  if (pthread_mutex_trylock(&pool.dispatch) != 0) {
    run_serial(n, fn, ctx); /* the pool is in use by another caller */
    return;
  }
  if (ensure_workers(parts - 1) < 1) {
    pthread_mutex_unlock(&pool.dispatch);
    run_serial(n, fn, ctx);
    return;
  }
  /* Ranges depend on `parts` only; with fewer workers than parts the claimers take several. */
  pool.fn = fn;
  pool.ctx = ctx;
  pool.n = n;
  pool.align = align < 1 ? 1 : align;
  pool.parts = parts;
  atomic_store(&pool.finished, 0);
  const uint32_t gen = atomic_load(&pool.generation) + 1u;
  atomic_store(&pool.claim, (uint64_t)gen << 32);
  atomic_store(&pool.generation, gen);
  if (atomic_load(&pool.sleeping) > 0) {
    pthread_mutex_lock(&pool.lock);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
  }

  if (measured) times[0] = now_ns();
  run_claimed_parts(gen);
  if (measured) times[1] = now_ns();

  /* Every range is claimed; wait for those still running on workers. */
  int spins = 0;
  while (atomic_load(&pool.finished) < parts) {
    if (++spins < MQ_WAIT_SPINS_BEFORE_YIELD) {
      cpu_relax();
    } else {
      sched_yield();
    }
  }
  pthread_mutex_unlock(&pool.dispatch);
  if (measured) note_job(start, times[0], times[1], now_ns());
}

/* ---- chunks claimed from a counter -------------------------------------------------------- */

typedef struct {
  mq_range_fn fn;
  void *ctx;
  int64_t n, chunk;
  atomic_llong next;
} chunks_job;

static void run_chunks(void *ctx, int64_t part_begin, int64_t part_end) {
  chunks_job *c = ctx;
  (void)part_begin;
  (void)part_end; /* parts only say how many threads share the chunks */
  for (;;) {
    const int64_t b = atomic_fetch_add(&c->next, c->chunk);
    if (b >= c->n) return;
    c->fn(c->ctx, b, b + c->chunk < c->n ? b + c->chunk : c->n);
  }
}

void mq_parallel_chunks(int64_t n, int64_t chunk, int parts, mq_range_fn fn, void *ctx) {
  if (n <= 0) return;
  chunks_job c = {fn, ctx, n, chunk < 1 ? 1 : chunk, 0};
  mq_parallel_for(parts, 1, 1, parts, run_chunks, &c);
}
