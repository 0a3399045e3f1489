/* embedding_avx2.c : embedding.h's loops compiled for AVX2 (+ F16C for half outputs); the same bits as the
 * portable table, more values per instruction (int8 -> float conversions, products, sums). */
#include "embedding.h"

MQ_EMBEDDING_DEFINE_KERNELS(mq_embedding_kernels_avx2, "avx2");
