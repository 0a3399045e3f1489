/*
 * tensor.h : a checked view of a DLPack tensor.  The module turns each capsule argument
 * into an mq_view; kernels then see only pointers, a dtype and a shape.
 */
#ifndef MQ_TENSOR_H
#define MQ_TENSOR_H

#include <stdint.h>

#include "dlpack.h"
#include "mono_quant.h"

#define MQ_MAX_NDIM 8

typedef struct {
  void *data;
  mq_dtype dtype;
  int ndim;
  int64_t shape[MQ_MAX_NDIM];
  int64_t numel;
  int readonly;
} mq_view;

/* What was wrong with a tensor that mq_view_from_dlpack refused, for the error message. */
typedef struct {
  int device_type;
  int dtype_code, dtype_bits, dtype_lanes;
  int ndim;
} mq_view_problem;

/*! mq_view_from_dlpack() :
 *  Checks that `t` is a CPU tensor of a dtype in mq_dtype, with 1 lane, at most MQ_MAX_NDIM
 *  dims, compact row-major strides (strides of size-1 dims are ignored), and data aligned to
 *  its element size.
 *  @return MQ_OK and fills `out`, else MQ_ERR_DEVICE / MQ_ERR_DTYPE / MQ_ERR_SHAPE /
 *          MQ_ERR_LAYOUT and fills `problem`. */
mq_status mq_view_from_dlpack(const DLTensor *t, int readonly, mq_view *out, mq_view_problem *problem);

/*! mq_device_name() : "cpu", "cuda", ... for a DLDeviceType value. */
const char *mq_device_name(int device_type);

#endif /* MQ_TENSOR_H */
