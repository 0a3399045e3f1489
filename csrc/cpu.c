/*
 * cpu.c : which SIMD paths this CPU and OS can run.  CPUID says what the core implements;
 * XGETBV says whether the OS saves the wide registers across context switches.  Both are
 * needed: an AVX-512 core under an OS that does not save ZMM state must not use AVX-512.
 * MONO_QUANT_DISABLE_SIMD=1 in the environment forces the portable path (tests use it);
 * MONO_QUANT_DISABLE_AMX=1 turns off the AMX tiles alone.
 *
 * The AMX tiles are opt-in for now (MONO_QUANT_ENABLE_AMX=1): the kernel has run only through
 * its C emulation of the tile instructions (the machines it was written on have no AMX), and
 * a path that has never run on the hardware must not be picked by default.  Once the tests
 * pass with MONO_QUANT_ENABLE_AMX=1 on an AMX CPU, this becomes opt-out.
 *
 * AMX needs three things: CPUID says the core has AMX-TILE and AMX-INT8, XCR0 says the OS
 * saves the tile state, and (Linux) the process is granted the 8 KB tile data state by
 * arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): until then the first tile instruction
 * faults.  The request is made once, here, when detection first runs.  On other OSes AMX is
 * left off (untested there).
 */
#define _GNU_SOURCE /* syscall() */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "mono_quant.h"

static int env_flag(const char *name) {
  const char *v = getenv(name);
  return v && *v && strcmp(v, "0") != 0;
}

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#define MQ_ARCH_REQ_XCOMP_PERM 0x1023
#define MQ_XFEATURE_XTILEDATA 18
/* 1 if the kernel grants this process the AMX tile data state (a no-op when already granted). */
static int amx_permitted(void) {
  return syscall(SYS_arch_prctl, MQ_ARCH_REQ_XCOMP_PERM, MQ_XFEATURE_XTILEDATA) == 0;
}
#else
static int amx_permitted(void) { return 0; }
#endif

static uint64_t read_xcr0(void) {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((uint64_t)hi << 32) | lo;
}

static unsigned detect(int allow_amx) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  const int has_osxsave = (c >> 27) & 1, has_fma = (c >> 12) & 1, has_f16c = (c >> 29) & 1;
  const int has_avx = (c >> 28) & 1;
  if (!has_osxsave || !has_avx) return 0;
  const uint64_t xcr0 = read_xcr0();
  const int os_ymm = (xcr0 & 0x6) == 0x6;   /* SSE and AVX state */
  const int os_zmm = (xcr0 & 0xe6) == 0xe6; /* plus opmask and both ZMM halves */
  if (__get_cpuid_max(0, NULL) < 7) return 0;
  __cpuid_count(7, 0, a, b, c, d);
  const int has_avx2 = (b >> 5) & 1;
  const int has_avx512 = ((b >> 16) & 1) && ((b >> 17) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1);
  const int has_vnni = (c >> 11) & 1;
  const int has_amx = ((d >> 24) & 1) && ((d >> 25) & 1); /* AMX-TILE, AMX-INT8 */
  const int os_tiles = (xcr0 & (3ull << 17)) == (3ull << 17); /* XTILECFG, XTILEDATA */
  unsigned features = 0;
  if (os_ymm && has_avx2 && has_fma && has_f16c) features |= MQ_CPU_AVX2;
  if ((features & MQ_CPU_AVX2) && os_zmm && has_avx512) features |= MQ_CPU_AVX512;
  if ((features & MQ_CPU_AVX512) && has_vnni) features |= MQ_CPU_VNNI;
  /* the AMX kernel's epilogue is AVX-512: AMX is used only on top of VNNI */
  if (allow_amx && (features & MQ_CPU_VNNI) && has_amx && os_tiles && amx_permitted())
    features |= MQ_CPU_AMX;
  return features;
}
#else
static unsigned detect(int allow_amx) {
  (void)allow_amx;
  return 0;
}
#endif

/* The CPU-feature cache: written once, the same value by whichever thread gets there. */
static atomic_uint cached = 0; /* bit 31 marks "detected" */

unsigned mq_cpu_detect(void) {
  unsigned v = atomic_load(&cached);
  if (v & 0x80000000u) return v & 0x7fffffffu;
  const int allow_amx = env_flag("MONO_QUANT_ENABLE_AMX") && !env_flag("MONO_QUANT_DISABLE_AMX");
  unsigned features = env_flag("MONO_QUANT_DISABLE_SIMD") ? 0u : detect(allow_amx);
  atomic_store(&cached, features | 0x80000000u);
  return features;
}

/* ---- LINEAR: forward-path dispatch -------------------------------------------------------
 * The quantized Linear paths, best last.  The active one is the best this CPU supports,
 * unless a test forced another with mq_linear_set_isa: that override lives here, in the
 * dispatch table's own slot, and nowhere else. */
#include "linear.h"

#define VNNI_NEEDS (MQ_CPU_AVX2 | MQ_CPU_AVX512 | MQ_CPU_VNNI)
typedef struct {
  const mq_linear_kernels *kern;
  unsigned needs;
  int test_only; /* never picked as the best: runs only when a test forces it */
} linear_path;

static const linear_path linear_paths[] = {
    {&mq_linear_kernels_portable, 0u, 0},
#if defined(__x86_64__)
    {&mq_linear_kernels_avx2, MQ_CPU_AVX2, 0},
    {&mq_linear_kernels_avx512_vnni, VNNI_NEEDS, 0},
    /* the AMX kernel with its tile instructions emulated in C: tests its data movement here */
    {&mq_linear_kernels_amx_emulated, VNNI_NEEDS, 1},
#if defined(MQ_HAVE_AMX)
    {&mq_linear_kernels_amx, VNNI_NEEDS | MQ_CPU_AMX, 0},
#endif
#endif
};
#define LINEAR_PATHS ((int)(sizeof linear_paths / sizeof linear_paths[0]))

static unsigned linear_path_needs(int index) { return linear_paths[index].needs; }

static int linear_best(void) {
  const unsigned have = mq_cpu_detect();
  int best = 0;
  for (int i = 0; i < LINEAR_PATHS; i++)
    if (!linear_paths[i].test_only && (have & linear_path_needs(i)) == linear_path_needs(i)) best = i;
  return best;
}

/* index + 1 of the active path; 0 until the first call picks the best one */
static atomic_int linear_active = 0;

const mq_linear_kernels *mq_linear_active(void) {
  int v = atomic_load(&linear_active);
  if (v == 0) {
    v = linear_best() + 1;
    atomic_store(&linear_active, v);
  }
  return linear_paths[v - 1].kern;
}

const char *mq_linear_isa_name(void) { return mq_linear_active()->name; }

static int linear_find(const char *name) {
  for (int i = 0; i < LINEAR_PATHS; i++)
    if (strcmp(linear_paths[i].kern->name, name) == 0) return i;
  return -1;
}

/* Batch-kernel threshold override (mq_linear_set_gemm_min_batch); 0 = each path's own. */
static atomic_llong gemm_min_override = 0;

int64_t mq_linear_gemm_min_batch(const mq_linear_kernels *kern) {
  const int64_t v = atomic_load(&gemm_min_override);
  return v > 0 ? v : kern->batch_min_m;
}

int64_t mq_linear_set_gemm_min_batch(int64_t m) { return atomic_exchange(&gemm_min_override, m < 0 ? 0 : m); }

const char *mq_linear_batch_name(int64_t *min_batch) {
  const mq_linear_kernels *kern = mq_linear_active();
  *min_batch = kern->int8_batch ? mq_linear_gemm_min_batch(kern) : 0;
  return kern->int8_batch ? kern->batch_name : NULL;
}

int mq_linear_isa_supported(const char *name) {
  const int i = linear_find(name);
  return i >= 0 && (mq_cpu_detect() & linear_path_needs(i)) == linear_path_needs(i);
}

mq_status mq_linear_set_isa(const char *name) {
  if (strcmp(name, "auto") == 0) {
    atomic_store(&linear_active, linear_best() + 1);
    return MQ_OK;
  }
  if (!mq_linear_isa_supported(name)) return MQ_ERR_ARG;
  atomic_store(&linear_active, linear_find(name) + 1);
  return MQ_OK;
}

/* ---- GPTQ: inner-loop dispatch -------------------------------------------------------------
 * The same arrangement for the GPTQ loops (gptq.h): every table computes the same bits, the
 * wider ones faster; tests force each in turn with mq_gptq_set_isa. */
#include "gptq.h"

static const mq_gptq_kernels *const gptq_paths[] = {
    &mq_gptq_kernels_portable,
#if defined(__x86_64__)
    &mq_gptq_kernels_avx2,
    &mq_gptq_kernels_avx512,
#endif
};
#define GPTQ_PATHS ((int)(sizeof gptq_paths / sizeof gptq_paths[0]))

static unsigned gptq_path_needs(int index) {
  static const unsigned needs[3] = {0u, MQ_CPU_AVX2, MQ_CPU_AVX2 | MQ_CPU_AVX512};
  return needs[index];
}

static int gptq_best(void) {
  const unsigned have = mq_cpu_detect();
  int best = 0;
  for (int i = 0; i < GPTQ_PATHS; i++)
    if ((have & gptq_path_needs(i)) == gptq_path_needs(i)) best = i;
  return best;
}

static atomic_int gptq_active = 0; /* index + 1 of the active table; 0 until first use */

const mq_gptq_kernels *mq_gptq_active(void) {
  int v = atomic_load(&gptq_active);
  if (v == 0) {
    v = gptq_best() + 1;
    atomic_store(&gptq_active, v);
  }
  return gptq_paths[v - 1];
}

const char *mq_gptq_isa_name(void) { return mq_gptq_active()->name; }

static int gptq_find(const char *name) {
  for (int i = 0; i < GPTQ_PATHS; i++)
    if (strcmp(gptq_paths[i]->name, name) == 0) return i;
  return -1;
}

int mq_gptq_isa_supported(const char *name) {
  const int i = gptq_find(name);
  return i >= 0 && (mq_cpu_detect() & gptq_path_needs(i)) == gptq_path_needs(i);
}

mq_status mq_gptq_set_isa(const char *name) {
  if (strcmp(name, "auto") == 0) {
    atomic_store(&gptq_active, gptq_best() + 1);
    return MQ_OK;
  }
  if (!mq_gptq_isa_supported(name)) return MQ_ERR_ARG;
  atomic_store(&gptq_active, gptq_find(name) + 1);
  return MQ_OK;
}

/* ---- EMBEDDING: gather / bag loop dispatch ---------------------------------------------------
 * The same arrangement for the per-row INT8 embedding loops (embedding.h): every table computes
 * the same bits; tests force each in turn with mq_embedding_set_isa. */
#include "embedding.h"

static const mq_embedding_kernels *const embedding_paths[] = {
    &mq_embedding_kernels_portable,
#if defined(__x86_64__)
    &mq_embedding_kernels_avx2,
    &mq_embedding_kernels_avx512,
#endif
};
#define EMBEDDING_PATHS ((int)(sizeof embedding_paths / sizeof embedding_paths[0]))

static unsigned embedding_path_needs(int index) {
  static const unsigned needs[3] = {0u, MQ_CPU_AVX2, MQ_CPU_AVX2 | MQ_CPU_AVX512};
  return needs[index];
}

static int embedding_best(void) {
  const unsigned have = mq_cpu_detect();
  int best = 0;
  for (int i = 0; i < EMBEDDING_PATHS; i++)
    if ((have & embedding_path_needs(i)) == embedding_path_needs(i)) best = i;
  return best;
}

static atomic_int embedding_active = 0; /* index + 1 of the active table; 0 until first use */

const mq_embedding_kernels *mq_embedding_active(void) {
  int v = atomic_load(&embedding_active);
  if (v == 0) {
    v = embedding_best() + 1;
    atomic_store(&embedding_active, v);
  }
  return embedding_paths[v - 1];
}

const char *mq_embedding_isa_name(void) { return mq_embedding_active()->name; }

static int embedding_find(const char *name) {
  for (int i = 0; i < EMBEDDING_PATHS; i++)
    if (strcmp(embedding_paths[i]->name, name) == 0) return i;
  return -1;
}

int mq_embedding_isa_supported(const char *name) {
  const int i = embedding_find(name);
  return i >= 0 && (mq_cpu_detect() & embedding_path_needs(i)) == embedding_path_needs(i);
}

mq_status mq_embedding_set_isa(const char *name) {
  if (strcmp(name, "auto") == 0) {
    atomic_store(&embedding_active, embedding_best() + 1);
    return MQ_OK;
  }
  if (!mq_embedding_isa_supported(name)) return MQ_ERR_ARG;
  atomic_store(&embedding_active, embedding_find(name) + 1);
  return MQ_OK;
}
