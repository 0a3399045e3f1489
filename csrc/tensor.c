/* tensor.c : DLPack tensor -> checked mq_view, and the names used in error messages. */
#include "tensor.h"

#include <stddef.h>

const char *mq_status_name(mq_status status) {
  switch (status) {
    case MQ_OK: return "MQ_OK";
    case MQ_ERR_ARG: return "MQ_ERR_ARG";
    case MQ_ERR_DTYPE: return "MQ_ERR_DTYPE";
    case MQ_ERR_DEVICE: return "MQ_ERR_DEVICE";
    case MQ_ERR_SHAPE: return "MQ_ERR_SHAPE";
    case MQ_ERR_LAYOUT: return "MQ_ERR_LAYOUT";
    case MQ_ERR_NONFINITE: return "MQ_ERR_NONFINITE";
    case MQ_ERR_NOMEM: return "MQ_ERR_NOMEM";
    case MQ_ERR_THREAD: return "MQ_ERR_THREAD";
    case MQ_ERR_READONLY: return "MQ_ERR_READONLY";
    case MQ_ERR_INDEX: return "MQ_ERR_INDEX";
  }
  return "MQ_ERR_UNKNOWN";
}

const char *mq_dtype_name(mq_dtype dtype) {
  static const char *const names[MQ_DTYPE_COUNT] = {"float32", "float16", "bfloat16",
                                                     "int8",    "uint8",   "int32",
                                                     "int64",   "float64"};
  return (unsigned)dtype < MQ_DTYPE_COUNT ? names[dtype] : "unknown";
}

size_t mq_dtype_size(mq_dtype dtype) {
  static const size_t sizes[MQ_DTYPE_COUNT] = {4, 2, 2, 1, 1, 4, 8, 8};
  return (unsigned)dtype < MQ_DTYPE_COUNT ? sizes[dtype] : 0;
}

const char *mq_device_name(int device_type) {
  switch (device_type) {
    case kDLCPU: return "cpu";
    case kDLCUDA: return "cuda";
    case kDLCUDAHost: return "cuda pinned host memory";
    case kDLCUDAManaged: return "cuda managed memory";
    case kDLROCM: return "rocm";
    case kDLMetal: return "mps";
    case kDLOneAPI: return "xpu";
    case kDLVulkan: return "vulkan";
    case kDLOpenCL: return "opencl";
    default: return "a non-CPU device";
  }
}

static int dtype_from_dl(DLDataType t, mq_dtype *out) {
  if (t.lanes != 1) return 0;
  if (t.code == kDLFloat && t.bits == 32) *out = MQ_F32;
  else if (t.code == kDLFloat && t.bits == 16) *out = MQ_F16;
  else if (t.code == kDLBfloat && t.bits == 16) *out = MQ_BF16;
  else if (t.code == kDLInt && t.bits == 8) *out = MQ_I8;
  else if (t.code == kDLUInt && t.bits == 8) *out = MQ_U8;
  else if (t.code == kDLInt && t.bits == 32) *out = MQ_I32;
  else if (t.code == kDLInt && t.bits == 64) *out = MQ_I64;
  else if (t.code == kDLFloat && t.bits == 64) *out = MQ_F64;
  else return 0;
  return 1;
}

mq_status mq_view_from_dlpack(const DLTensor *t, int readonly, mq_view *out, mq_view_problem *problem) {
  problem->device_type = t->device.device_type;
  problem->dtype_code = t->dtype.code;
  problem->dtype_bits = t->dtype.bits;
  problem->dtype_lanes = t->dtype.lanes;
  problem->ndim = t->ndim;
  if (t->device.device_type != kDLCPU) return MQ_ERR_DEVICE;
  if (!dtype_from_dl(t->dtype, &out->dtype)) return MQ_ERR_DTYPE;
  if (t->ndim < 0 || t->ndim > MQ_MAX_NDIM) return MQ_ERR_SHAPE;
  out->ndim = t->ndim;
  out->numel = 1;
  for (int d = 0; d < t->ndim; d++) {
    if (t->shape[d] < 0) return MQ_ERR_SHAPE;
    out->shape[d] = t->shape[d];
    out->numel *= t->shape[d];
  }
  /* compact row-major: stride[d] == product of the later dims (any value for size-1 dims) */
  if (t->strides != NULL && out->numel > 0) {
    int64_t expected = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
      if (t->shape[d] != 1 && t->strides[d] != expected) return MQ_ERR_LAYOUT;
      expected *= t->shape[d];
    }
  }
  const size_t elem = mq_dtype_size(out->dtype);
  char *data = (char *)t->data + t->byte_offset;
  if (out->numel > 0 && (t->data == NULL || ((uintptr_t)data % elem) != 0)) return MQ_ERR_LAYOUT;
  out->data = data;
  out->readonly = readonly;
  return MQ_OK;
}
