/*
 * linear_amx_real.c : linear_amx.c with the real tile instructions (MQ_AMX_REAL), compiled with
 * -mamx-tile -mamx-int8 when the compiler takes them (CMakeLists.txt).  linear_amx.c itself
 * builds the emulated twin.
 */
#define MQ_AMX_REAL 1
#include "linear_amx.c"
