/* gptq_avx2.c : the GPTQ inner loops of gptq.h compiled for AVX2 (flags in CMakeLists.txt);
 * the same arithmetic as the portable table, eight floats / four doubles per instruction. */
#include "gptq.h"

MQ_GPTQ_DEFINE_KERNELS(mq_gptq_kernels_avx2, "avx2", 4);
