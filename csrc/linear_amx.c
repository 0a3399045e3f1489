/*
 * linear_amx.c : the batch kernels of the quantized Linear on AMX-INT8 tiles (tdpbusd), for
 * INT8 and INT4 weights; batch 1 and small batches, and the activation quantization, are the
 * avx512_vnni path's.
 *
 * Compiled twice, both times with the AVX-512 flags (the float epilogue is AVX-512):
 *   - with -mamx-tile -mamx-int8 and MQ_AMX_REAL: mq_linear_kernels_amx, the tile operations
 *     below being the real instructions (cpu.c runs it only where CPUID, XCR0 and the Linux
 *     permission request say they work);
 *   - without: mq_linear_kernels_amx_emulated, each tile operation a C function with the
 *     instruction's semantics on a tile register file in the caller's frame.  Tests force it
 *     on any AVX-512 VNNI CPU, so the data movement of the AMX kernel (tile shapes, strides,
 *     offsets, the unsigned/signed roles) is checked against the torch twin even where the
 *     CPU has no tiles; where it has them the tests run the real one too.
 *
 * ---- the arithmetic -------------------------------------------------------------------------
 * tdpbusd C += A . B takes A unsigned and B signed, the other way round from how the VNNI path
 * feeds vpdpbusd.  So the roles are swapped and the signs moved:
 *   A = the activations as unsigned bytes xu = xq + 128 (xq ^ 0x80, made once per call by the
 *       driver: job->xu), 16 batch rows x 32 k (one activation block);
 *   B = one block of 16 weight rows in the VNNI layout of linear.h (row q = k 4q..4q+3 of the
 *       16 rows), signed: INT8 w = wu - 128 (wu ^ 0x80), INT4 the nibbles u (0..15);
 *   C starts at -128 * (sum over the block of w[n] or u[n]), the same for every batch row (a
 *       stride-0 tile load of one 64-byte row), so after tdpbusd
 *         C[m][n] = sum_i (xq[m][i] + 128) * w[n][i] - 128 * sum_i w[n][i] = sum_i xq[m][i] * w[n][i],
 *       the exact block dot product the other paths compute.
 * From there each output element takes the same float operations, in the same order, as in the
 * avx512_vnni batch kernels (one fused multiply-add per block, then the zero-point and scale
 * terms): the amx, amx_emulated and avx512_vnni paths give the same bits.
 *
 * ---- blocking -------------------------------------------------------------------------------
 * One weight tile (16 output rows) at a time; its k is cut into chunks of KC blocks whose B
 * tiles (signed / unpacked, 512 bytes each) and C starting rows are prepared once into the
 * stack and reused by every 16-row block of an M-panel of MC rows.  The float sums of a
 * 16-row block live in 16 zmm registers within a chunk and in a panel buffer between chunks.
 * The tiles are configured at the start of each call and released at its end, so a thread
 * holds no tile state between calls.
 */
#include <immintrin.h>

#include "avx512_store.h"
#include "linear.h"

/* ---- the tile-operation layer ---------------------------------------------------------- */

/* The 64-byte operand of LDTILECFG (palette 1). */
typedef struct {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16]; /* bytes per row of tile i */
  uint8_t rows[16];
} amx_tilecfg;
static_assert(sizeof(amx_tilecfg) == 64, "the AMX tile configuration must be 64 bytes");

#if defined(MQ_AMX_REAL)
/* The real instructions: the tile registers are the CPU's; the frame holds nothing. */
typedef struct {
  char unused;
} amx_regs;
/* gcc's tile intrinsics are asm statements, and take the tile numbers as constants.  Two of
 * them tell the compiler less than they read: gcc 12's _tile_loadconfig names only the first 8
 * bytes of the 64-byte configuration, and _tile_loadd no memory at all, so stores that fill a
 * configuration or a B tile could be dropped or moved after the instruction.  Hence our own
 * ldtilecfg naming the whole struct, and a compiler barrier before every tile load. */
#define AMX_CONFIG(R, cfg)                                                   \
  do {                                                                       \
    (void)(R);                                                               \
    __asm__ volatile("ldtilecfg %0" ::"m"(*(const amx_tilecfg *)(cfg)));     \
  } while (0)
#define AMX_LOAD(R, T, base, stride)        \
  do {                                      \
    (void)(R);                              \
    __asm__ volatile("" ::: "memory");      \
    _tile_loadd(T, base, stride);           \
  } while (0)
#define AMX_DPBUSD(R, C, A, B) do { (void)(R); _tile_dpbusd(C, A, B); } while (0)
#define AMX_STORE(R, T, base, stride) do { (void)(R); _tile_stored(T, base, stride); } while (0)
#define AMX_RELEASE(R) do { (void)(R); _tile_release(); } while (0)
#define KERNELS mq_linear_kernels_amx
#define NAME "amx"
#else
/* The emulation: eight tiles of 16 rows x 64 bytes and the configuration, as the CPU holds
 * them.  Semantics as the Intel SDM gives them for palette 1; parts of a tile outside its
 * configured rows / colsb read as zero after a load. */
typedef struct {
  amx_tilecfg cfg;
  uint8_t t[8][16][64];
  int fault; /* an operand shape the CPU would refuse (#UD): results are poisoned */
} amx_regs;

static void emu_config(amx_regs *r, const amx_tilecfg *cfg) {
  memcpy(&r->cfg, cfg, sizeof r->cfg);
  memset(r->t, 0, sizeof r->t);
  r->fault = cfg->palette_id != 1;
  for (int i = 0; i < 8; i++) r->fault |= cfg->rows[i] > 16 || cfg->colsb[i] > 64;
}

static void emu_load(amx_regs *r, int t, const void *base, int64_t stride) {
  const int rows = r->cfg.rows[t], colsb = r->cfg.colsb[t];
  memset(r->t[t], 0, sizeof r->t[t]);
  for (int i = 0; i < rows; i++) memcpy(r->t[t][i], (const uint8_t *)base + i * stride, (size_t)colsb);
}

static void emu_store(const amx_regs *r, int t, void *base, int64_t stride) {
  const int rows = r->cfg.rows[t], colsb = r->cfg.colsb[t];
  for (int i = 0; i < rows; i++) memcpy((uint8_t *)base + i * stride, r->t[t][i], (size_t)colsb);
}

/* tdpbusd C, A, B: C[m][n] += sum over k4 < colsb(A)/4, j < 4 of u8 A[m][4 k4 + j] *
 * s8 B[k4][4 n + j], int32 with wraparound, for m < rows(C), n < colsb(C)/4.  The CPU refuses
 * (#UD) unless rows(A) = rows(C), colsb(A) = 4 rows(B) and colsb(B) = colsb(C). */
static void emu_dpbusd(amx_regs *r, int c, int a, int b) {
  const amx_tilecfg *g = &r->cfg;
  if (g->rows[a] != g->rows[c] || g->colsb[a] != 4 * g->rows[b] || g->colsb[b] != g->colsb[c] ||
      g->colsb[c] % 4 != 0)
    r->fault = 1;
  if (r->fault) {
    memset(r->t[c], 0x7f, sizeof r->t[c]);
    return;
  }
  for (int m = 0; m < g->rows[c]; m++)
    for (int n = 0; n < g->colsb[c] / 4; n++) {
      uint32_t acc;
      memcpy(&acc, &r->t[c][m][4 * n], sizeof acc);
      for (int k4 = 0; k4 < g->colsb[a] / 4; k4++)
        for (int j = 0; j < 4; j++)
          acc += (uint32_t)((int32_t)r->t[a][m][4 * k4 + j] * (int32_t)(int8_t)r->t[b][k4][4 * n + j]);
      memcpy(&r->t[c][m][4 * n], &acc, sizeof acc);
    }
}

#define AMX_CONFIG(R, cfg) emu_config(R, cfg)
#define AMX_LOAD(R, T, base, stride) emu_load(R, T, base, stride)
#define AMX_DPBUSD(R, C, A, B) emu_dpbusd(R, C, A, B)
#define AMX_STORE(R, T, base, stride) emu_store(R, T, base, stride)
#define AMX_RELEASE(R) ((void)(R))
#define KERNELS mq_linear_kernels_amx_emulated
#define NAME "amx_emulated"
#endif

/* Tiles 0 and 3 = C (16 batch rows x 16 int32), 1 and 4 = A (16 rows x 32 activation bytes),
 * 2 and 5 = B (8 rows of k quads x 16 weight rows x 4 bytes): two sets for alternate blocks. */
static void amx_setup(amx_regs *r) {
  amx_tilecfg cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int set = 0; set < 6; set += 3) {
    cfg.rows[set] = 16, cfg.colsb[set] = 64;
    cfg.rows[set + 1] = 16, cfg.colsb[set + 1] = MQ_LINEAR_QK;
    cfg.rows[set + 2] = MQ_LINEAR_QK / 4, cfg.colsb[set + 2] = 64;
  }
  AMX_CONFIG(r, &cfg);
}

#define KC 32 /* blocks per k-chunk: B tiles of 16 KB, prepared once per chunk and M-panel */
#define MC 64 /* batch rows per M-panel */
#define MB 16 /* batch rows per tile */

/* A k-chunk of one weight tile, ready for the tiles: B[bi] and C's starting row comp[bi]. */
typedef struct {
  uint8_t b[KC][MQ_LINEAR_INT8_BLOCK_BYTES];
  int32_t comp[KC][MQ_LINEAR_NR];
} amx_chunk;

/* The float sums of an M-panel for one tile. */
typedef struct {
  float v[MC][MQ_LINEAR_NR];
} amx_sums;

/* -128 * the row sums of one B tile (8 x 64 signed bytes): the starting row of C. */
static inline void block_comp(const uint8_t *b, int32_t *comp) {
  __m512i sum = _mm512_setzero_si512();
  const __m512i ones = _mm512_set1_epi8(1);
  for (int q = 0; q < MQ_LINEAR_QK / 4; q++) /* unsigned 1 x signed weight, four per row */
    sum = _mm512_dpbusd_epi32(sum, ones, _mm512_load_si512(b + q * 64));
  _mm512_store_si512(comp, _mm512_mullo_epi32(sum, _mm512_set1_epi32(-128)));
}

/* INT8 blocks [b0, b1) of tile t: w = wu ^ 0x80. */
static void int8_prepare(const mq_linear_job *job, int64_t t, int64_t b0, int64_t b1, amx_chunk *ch) {
  const uint8_t *tile = job->tiles + t * job->tile_bytes;
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  for (int64_t b = b0; b < b1; b++) {
    uint8_t *dst = ch->b[b - b0];
    for (int q = 0; q < 8; q++)
      _mm512_store_si512(dst + q * 64, _mm512_xor_si512(_mm512_loadu_si512(tile + b * MQ_LINEAR_INT8_BLOCK_BYTES + q * 64), flip));
    block_comp(dst, ch->comp[b - b0]);
  }
}

/* INT4 groups [g0, g1) of tile t: the nibbles as bytes, k quads in order (low nibbles of the
 * four 64-byte chunks hold k 0..15 of the block, high nibbles k 16..31). */
static void int4_prepare(const mq_linear_job *job, int64_t t, int64_t g0, int64_t g1, amx_chunk *ch) {
  const int64_t bpg = job->group / MQ_LINEAR_QK;
  const int64_t group_bytes = MQ_LINEAR_INT4_GROUP_HEADER + bpg * MQ_LINEAR_INT4_BLOCK_BYTES;
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  int bi = 0;
  for (int64_t grp = g0; grp < g1; grp++) {
    const uint8_t *p = job->tiles + t * job->tile_bytes + grp * group_bytes + MQ_LINEAR_INT4_GROUP_HEADER;
    for (int64_t bb = 0; bb < bpg; bb++, bi++, p += MQ_LINEAR_INT4_BLOCK_BYTES) {
      uint8_t *dst = ch->b[bi];
      for (int c = 0; c < 4; c++) {
        const __m512i raw = _mm512_loadu_si512(p + c * 64);
        _mm512_store_si512(dst + c * 64, _mm512_and_si512(raw, low4));
        _mm512_store_si512(dst + (4 + c) * 64, _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4));
      }
      block_comp(dst, ch->comp[bi]);
    }
  }
}

/* C = the exact block dot products of batch rows m0..m0+15 with the 16 weight rows of block bi
 * of the chunk, for activation block b, stored to c.  Two sets of tiles (0-2 and 3-5) take
 * alternate blocks, so the tiles of one block can run while the float sums of the other are
 * taken.  A macro: the tile numbers must be constants. */
#define BLOCK_DOT(R, TC, TA, TB, JOB, CH, BI, M0, BLK, CBUF)                                  \
  do {                                                                                       \
    AMX_LOAD(R, TC, (CH)->comp[BI], 0); /* stride 0: every row starts at comp */             \
    AMX_LOAD(R, TA, (JOB)->xu + (M0) * (JOB)->kp + (BLK) * MQ_LINEAR_QK, (JOB)->kp);         \
    AMX_LOAD(R, TB, (CH)->b[BI], 64);                                                        \
    AMX_DPBUSD(R, TC, TA, TB);                                                               \
    AMX_STORE(R, TC, CBUF, 64);                                                              \
  } while (0)

/* acc[i] + d[i][b] * c[i] for the 16 rows, one fused multiply-add each (as the VNNI path). */
#define ACCUMULATE(ACC, CBUF, D, BLK)                                                               \
  do {                                                                                               \
    _Pragma("GCC unroll 16") for (int i = 0; i < MB; i++) ACC[i] =                                   \
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(CBUF[i])), _mm512_set1_ps(D[i][BLK]), ACC[i]); \
  } while (0)

/* Rows of the 16-row block at m0 that are real; the others (zero activations) repeat the last
 * real row's scales so that nothing is read past the job's arrays, and are never stored. */
static inline void row_pointers(const mq_linear_job *job, int64_t m0, int64_t mrows, const float **d,
                                const float **corr, int64_t per_row) {
  for (int i = 0; i < MB; i++) {
    const int64_t m = m0 + (i < mrows ? i : mrows - 1);
    d[i] = job->d + m * job->nb;
    corr[i] = job->corr + m * per_row;
  }
}

/* INT8: blocks [b0, b1) for batch rows m0.. (mrows real), float sums in sums[0..16). */
static void int8_rows(amx_regs *r, const mq_linear_job *job, const amx_chunk *ch, int64_t m0,
                      int64_t mrows, int64_t b0, int64_t b1, float (*sums)[MQ_LINEAR_NR]) {
  const float *d[MB], *corr[MB];
  row_pointers(job, m0, mrows, d, corr, 1);
  int32_t c0[MB][MQ_LINEAR_NR] __attribute__((aligned(64))), c1[MB][MQ_LINEAR_NR] __attribute__((aligned(64)));
  __m512 facc[MB];
#pragma GCC unroll 16
  for (int i = 0; i < MB; i++) facc[i] = b0 == 0 ? _mm512_setzero_ps() : _mm512_load_ps(sums[i]);
  int64_t b = b0;
  for (; b + 1 < b1; b += 2) {
    BLOCK_DOT(r, 0, 1, 2, job, ch, b - b0, m0, b, c0);
    BLOCK_DOT(r, 3, 4, 5, job, ch, b + 1 - b0, m0, b + 1, c1);
    ACCUMULATE(facc, c0, d, b);
    ACCUMULATE(facc, c1, d, b + 1);
  }
  if (b < b1) {
    BLOCK_DOT(r, 0, 1, 2, job, ch, b - b0, m0, b, c0);
    ACCUMULATE(facc, c0, d, b);
  }
#pragma GCC unroll 16
  for (int i = 0; i < MB; i++) _mm512_store_ps(sums[i], facc[i]);
}

/* INT4: groups [g0, g1); the group sums in registers, the float sums in sums[0..16). */
static void int4_rows(amx_regs *r, const mq_linear_job *job, int64_t t, const amx_chunk *ch, int64_t m0,
                      int64_t mrows, int64_t g0, int64_t g1, float (*sums)[MQ_LINEAR_NR]) {
  const int64_t bpg = job->group / MQ_LINEAR_QK;
  const int64_t group_bytes = MQ_LINEAR_INT4_GROUP_HEADER + bpg * MQ_LINEAR_INT4_BLOCK_BYTES;
  const float *d[MB], *D[MB];
  row_pointers(job, m0, mrows, d, D, job->ng);
  int32_t c0[MB][MQ_LINEAR_NR] __attribute__((aligned(64))), c1[MB][MQ_LINEAR_NR] __attribute__((aligned(64)));
  if (g0 == 0)
    for (int i = 0; i < MB; i++) _mm512_store_ps(sums[i], _mm512_setzero_ps());
  for (int64_t grp = g0; grp < g1; grp++) {
    __m512 gacc[MB];
#pragma GCC unroll 16
    for (int i = 0; i < MB; i++) gacc[i] = _mm512_setzero_ps();
    const int64_t bi0 = (grp - g0) * bpg, bg = grp * bpg; /* chunk / job index of its first block */
    int64_t bb = 0;
    for (; bb + 1 < bpg; bb += 2) {
      BLOCK_DOT(r, 0, 1, 2, job, ch, bi0 + bb, m0, bg + bb, c0);
      BLOCK_DOT(r, 3, 4, 5, job, ch, bi0 + bb + 1, m0, bg + bb + 1, c1);
      ACCUMULATE(gacc, c0, d, bg + bb);
      ACCUMULATE(gacc, c1, d, bg + bb + 1);
    }
    if (bb < bpg) {
      BLOCK_DOT(r, 0, 1, 2, job, ch, bi0 + bb, m0, bg + bb, c0);
      ACCUMULATE(gacc, c0, d, bg + bb);
    }
    /* as int4_group_params in linear_avx512.c */
    const uint8_t *hdr = job->tiles + t * job->tile_bytes + grp * group_bytes;
    const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)hdr));
    const __m512 zero = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(hdr + 32))));
#pragma GCC unroll 16
    for (int i = 0; i < MB; i++)
      _mm512_store_ps(sums[i], _mm512_fmadd_ps(scale, _mm512_fnmadd_ps(zero, _mm512_set1_ps(D[i][grp]), gacc[i]),
                                               _mm512_load_ps(sums[i])));
  }
}

/* ---- output (avx512_store.h) --------------------------------------------------------------- */

static inline void store_row(const mq_linear_job *job, int64_t m, int64_t n0, __m512 y, int64_t rows) {
  mq_store16(job->out, job->out_dtype, m * job->n + n0, y, mq_mask_first16(rows));
}

static void int8_panel_out(const mq_linear_job *job, int64_t t, int64_t m0, int64_t mc, const amx_sums *s) {
  const uint8_t *tail = job->tiles + t * job->tile_bytes + job->nb * MQ_LINEAR_INT8_BLOCK_BYTES;
  const __m512 scale = _mm512_loadu_ps(tail);
  const __m512 zero = _mm512_cvtepi32_ps(_mm512_loadu_si512(tail + 64));
  const int64_t n0 = t * MQ_LINEAR_NR, rows = mq_linear_tile_rows(job, t);
  const __m512 bias = job->bias ? _mm512_maskz_loadu_ps(mq_mask_first16(rows), job->bias + n0) : _mm512_setzero_ps();
  for (int64_t i = 0; i < mc; i++) {
    const __m512 diff = _mm512_fnmadd_ps(zero, _mm512_set1_ps(job->corr[m0 + i]), _mm512_load_ps(s->v[i]));
    store_row(job, m0 + i, n0, _mm512_fmadd_ps(scale, diff, bias), rows);
  }
}

static void int4_panel_out(const mq_linear_job *job, int64_t t, int64_t m0, int64_t mc, const amx_sums *s) {
  const int64_t n0 = t * MQ_LINEAR_NR, rows = mq_linear_tile_rows(job, t);
  const __m512 bias = job->bias ? _mm512_maskz_loadu_ps(mq_mask_first16(rows), job->bias + n0) : _mm512_setzero_ps();
  for (int64_t i = 0; i < mc; i++) store_row(job, m0 + i, n0, _mm512_add_ps(_mm512_load_ps(s->v[i]), bias), rows);
}

/* ---- the batch kernels ---------------------------------------------------------------------- */

static void int8_batch_amx(const mq_linear_job *job, int64_t t0, int64_t t1) {
  amx_regs regs;
  amx_chunk ch __attribute__((aligned(64)));
  amx_sums sums __attribute__((aligned(64)));
  amx_setup(&regs);
  for (int64_t t = t0; t < t1; t++)
    for (int64_t mp = 0; mp < job->m; mp += MC) {
      const int64_t mc = job->m - mp < MC ? job->m - mp : MC;
      for (int64_t b0 = 0; b0 < job->nb; b0 += KC) {
        const int64_t b1 = job->nb - b0 < KC ? job->nb : b0 + KC;
        int8_prepare(job, t, b0, b1, &ch);
        for (int64_t i = 0; i < mc; i += MB)
          int8_rows(&regs, job, &ch, mp + i, mc - i < MB ? mc - i : MB, b0, b1, &sums.v[i]);
      }
      int8_panel_out(job, t, mp, mc, &sums);
    }
  AMX_RELEASE(&regs);
}

static void int4_batch_amx(const mq_linear_job *job, int64_t t0, int64_t t1) {
  amx_regs regs;
  amx_chunk ch __attribute__((aligned(64)));
  amx_sums sums __attribute__((aligned(64)));
  const int64_t bpg = job->group / MQ_LINEAR_QK, gc = KC / bpg; /* whole groups per chunk */
  amx_setup(&regs);
  for (int64_t t = t0; t < t1; t++)
    for (int64_t mp = 0; mp < job->m; mp += MC) {
      const int64_t mc = job->m - mp < MC ? job->m - mp : MC;
      for (int64_t g0 = 0; g0 < job->ng; g0 += gc) {
        const int64_t g1 = job->ng - g0 < gc ? job->ng : g0 + gc;
        int4_prepare(job, t, g0, g1, &ch);
        for (int64_t i = 0; i < mc; i += MB)
          int4_rows(&regs, job, t, &ch, mp + i, mc - i < MB ? mc - i : MB, g0, g1, &sums.v[i]);
      }
      int4_panel_out(job, t, mp, mc, &sums);
    }
  AMX_RELEASE(&regs);
}

/* ---- everything else is the avx512_vnni path's ---------------------------------------------- */

static int quantize_row_amx(const void *x, mq_dtype dtype, int64_t k, int64_t kp, int8_t *xq, float *d,
                            int32_t *asum) {
  return mq_linear_kernels_avx512_vnni.quantize_row(x, dtype, k, kp, xq, d, asum);
}

static void int8_tiles_amx(const mq_linear_job *job, int64_t t0, int64_t t1) {
  mq_linear_kernels_avx512_vnni.int8_tiles(job, t0, t1);
}

static void int4_tiles_amx(const mq_linear_job *job, int64_t t0, int64_t t1) {
  mq_linear_kernels_avx512_vnni.int4_tiles(job, t0, t1);
}

static int64_t dot_u8s8_amx(const uint8_t *xu, const int8_t *ws, int64_t len) {
  return mq_linear_kernels_avx512_vnni.dot_u8s8(xu, ws, len);
}

/* From this batch on the tiles run (a 16-row tile is the unit; below it the avx512_vnni rows
 * kernels waste less).  A first guess, not yet measured on an AMX CPU. */
#define MQ_AMX_MIN_M 16

const mq_linear_kernels KERNELS = {NAME,           quantize_row_amx, int8_tiles_amx, int4_tiles_amx,
                                   dot_u8s8_amx,   int8_batch_amx,   int4_batch_amx, MQ_AMX_MIN_M,
                                   1,              NAME};
