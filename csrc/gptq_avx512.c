/* gptq_avx512.c : the GPTQ inner loops of gptq.h compiled for AVX-512 (flags in
 * CMakeLists.txt); the same arithmetic as the portable table, sixteen floats per instruction. */
#include "gptq.h"

MQ_GPTQ_DEFINE_KERNELS(mq_gptq_kernels_avx512, "avx512", 8);
