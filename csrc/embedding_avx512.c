/* embedding_avx512.c : embedding.h's loops compiled for AVX-512 F/BW/VL/DQ; the same bits as the
 * portable table, more values per instruction (int8 -> float conversions, products, sums). */
#include "embedding.h"

MQ_EMBEDDING_DEFINE_KERNELS(mq_embedding_kernels_avx512, "avx512");
