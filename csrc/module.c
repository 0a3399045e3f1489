/*
 * module.c : the CPython module mono_quant._C, the only file that includes Python.h.
 *
 * Each function: parse arguments, turn every DLPack capsule into a checked mq_view (dtype,
 * device, rank, layout), check shapes against each other, release the GIL, call the kernel,
 * and turn a failure into one Python exception whose message names the argument and says
 * what to do.  Capsules are borrowed for the call, never consumed: their owner (the
 * Python caller) keeps the tensor alive.  Built for the stable ABI (abi3, Python >= 3.10).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdio.h>

#include "dlpack.h"
#include "mono_quant.h"
#include "threadpool.h"
#include "tensor.h"

#define DT(d) (1u << (d))
#define FLOAT_DTYPES (DT(MQ_F32) | DT(MQ_F16) | DT(MQ_BF16))
#define INT8_DTYPES (DT(MQ_I8) | DT(MQ_U8))

typedef struct {
  const char *name; /* the argument's name in messages */
  unsigned dtypes;  /* accepted dtypes, a DT() mask */
  int ndim;         /* required rank, -1 for any */
  int output;       /* written by the kernel: must not be read-only */
} arg_spec;

/* ---- error messages --------------------------------------------------------------------- */

static void dl_dtype_str(int code, int bits, int lanes, char *buf, size_t size) {
  const char *kind = code == kDLInt ? "int" : code == kDLUInt ? "uint" : code == kDLFloat ? "float"
                   : code == kDLBfloat ? "bfloat" : code == kDLComplex ? "complex"
                   : code == kDLBool ? "bool" : "opaque";
  if (code == kDLBool)
    snprintf(buf, size, "bool");
  else if (lanes != 1)
    snprintf(buf, size, "%s%d x%d lanes", kind, bits, lanes);
  else
    snprintf(buf, size, "%s%d", kind, bits);
}

static void dtype_list_str(unsigned mask, char *buf, size_t size) {
  size_t used = 0;
  buf[0] = '\0';
  for (int d = 0; d < MQ_DTYPE_COUNT; d++) {
    if (!(mask & DT(d))) continue;
    int n = snprintf(buf + used, size - used, "%s%s", used ? ", " : "", mq_dtype_name((mq_dtype)d));
    if (n < 0 || (size_t)n >= size - used) break;
    used += (size_t)n;
  }
}

static int view_error(mq_status st, const arg_spec *spec, const mq_view_problem *p) {
  char got[48], want[96];
  switch (st) {
    case MQ_ERR_DEVICE:
      PyErr_Format(PyExc_ValueError,
                   "argument '%s' is on %s; the C kernels take CPU tensors (mono_quant's public "
                   "functions route other devices to the torch path; call those instead)",
                   spec->name, mq_device_name(p->device_type));
      break;
    case MQ_ERR_DTYPE:
      dl_dtype_str(p->dtype_code, p->dtype_bits, p->dtype_lanes, got, sizeof got);
      dtype_list_str(spec->dtypes, want, sizeof want);
      PyErr_Format(PyExc_TypeError, "argument '%s' has dtype %s; expected one of: %s (convert with .to())",
                   spec->name, got, want);
      break;
    case MQ_ERR_SHAPE:
      PyErr_Format(PyExc_ValueError, "argument '%s' has %d dimensions; at most %d are supported",
                   spec->name, p->ndim, MQ_MAX_NDIM);
      break;
    case MQ_ERR_LAYOUT:
      PyErr_Format(PyExc_ValueError,
                   "argument '%s' is not contiguous or not aligned; pass tensor.contiguous()",
                   spec->name);
      break;
    default:
      PyErr_Format(PyExc_RuntimeError, "argument '%s': %s", spec->name, mq_status_name(st));
  }
  return -1;
}

/* Raise the exception for a kernel's failure; `what` names the operation. */
static PyObject *kernel_error(mq_status st, const char *what) {
  switch (st) {
    case MQ_ERR_NONFINITE:
      PyErr_Format(PyExc_ValueError,
                   "%s: the input contains NaN or Inf; quantization needs finite values: replace "
                   "them (torch.nan_to_num) or leave this layer unquantized", what);
      break;
    case MQ_ERR_ARG:
      PyErr_Format(PyExc_ValueError, "%s: an argument is out of range (scales must be finite and "
                   "> 0, min <= max, qmin < qmax)", what);
      break;
    case MQ_ERR_NOMEM: PyErr_NoMemory(); break;
    case MQ_ERR_DTYPE: PyErr_Format(PyExc_TypeError, "%s: unsupported dtype combination", what); break;
    case MQ_ERR_SHAPE: PyErr_Format(PyExc_ValueError, "%s: sizes out of range", what); break;
    default: PyErr_Format(PyExc_RuntimeError, "%s failed: %s", what, mq_status_name(st));
  }
  return NULL;
}

/* ---- capsules -> views ------------------------------------------------------------------ */

static int view_arg(PyObject *obj, const arg_spec *spec, mq_view *out) {
  const DLTensor *t;
  int readonly = 0;
  if (PyCapsule_IsValid(obj, "dltensor")) {
    DLManagedTensor *m = PyCapsule_GetPointer(obj, "dltensor");
    t = &m->dl_tensor;
  } else if (PyCapsule_IsValid(obj, "dltensor_versioned")) {
    DLManagedTensorVersioned *m = PyCapsule_GetPointer(obj, "dltensor_versioned");
    if (m->version.major != DLPACK_MAJOR_VERSION) {
      PyErr_Format(PyExc_ValueError, "argument '%s' uses DLPack %u.%u; mono_quant reads DLPack 1.x",
                   spec->name, m->version.major, m->version.minor);
      return -1;
    }
    t = &m->dl_tensor;
    readonly = (m->flags & DLPACK_FLAG_BITMASK_READ_ONLY) != 0;
  } else {
    PyErr_Format(PyExc_TypeError,
                 "argument '%s' must be an unused DLPack capsule (tensor.__dlpack__()); got %s",
                 spec->name, Py_TYPE(obj) == NULL ? "?" : "another object");
    return -1;
  }
  mq_view_problem problem;
  mq_status st = mq_view_from_dlpack(t, readonly, out, &problem);
  if (st != MQ_OK) return view_error(st, spec, &problem);
  if (!(spec->dtypes & DT(out->dtype))) {
    problem.dtype_code = t->dtype.code;
    return view_error(MQ_ERR_DTYPE, spec, &problem);
  }
  if (spec->ndim >= 0 && out->ndim != spec->ndim) {
    PyErr_Format(PyExc_ValueError, "argument '%s' must have %d dimensions; got %d", spec->name,
                 spec->ndim, out->ndim);
    return -1;
  }
  if (spec->output && out->readonly) {
    PyErr_Format(PyExc_ValueError, "argument '%s' is read-only; pass a writable tensor", spec->name);
    return -1;
  }
  return 0;
}

/* Parse `n` capsules against their specs. */
static int view_args(PyObject *const *objs, const arg_spec *specs, mq_view *views, int n) {
  for (int i = 0; i < n; i++)
    if (view_arg(objs[i], &specs[i], &views[i]) < 0) return -1;
  return 0;
}

static int expect_len(const mq_view *v, const char *name, int64_t n) {
  if (v->numel != n) {
    PyErr_Format(PyExc_ValueError, "argument '%s' must hold %lld values (one per channel); got %lld",
                 name, (long long)n, (long long)v->numel);
    return -1;
  }
  return 0;
}

static int expect_same_shape(const mq_view *a, const char *an, const mq_view *b, const char *bn) {
  int same = a->ndim == b->ndim;
  for (int d = 0; same && d < a->ndim; d++) same = a->shape[d] == b->shape[d];
  if (!same) {
    PyErr_Format(PyExc_ValueError, "arguments '%s' and '%s' must have the same shape", an, bn);
    return -1;
  }
  return 0;
}

/* ---- functions -------------------------------------------------------------------------- */

static PyObject *py_cpu_features(PyObject *self, PyObject *args) {
  (void)self;
  (void)args;
  unsigned f = mq_cpu_detect();
  return Py_BuildValue("{s:O,s:O,s:O,s:s,s:s}", "avx2", (f & MQ_CPU_AVX2) ? Py_True : Py_False,
                       "avx512", (f & MQ_CPU_AVX512) ? Py_True : Py_False, "avx512_vnni",
                       (f & MQ_CPU_VNNI) ? Py_True : Py_False, "linear_kernel", mq_linear_isa_name(),
                       "threads", mq_threadpool_kind());
}

static PyObject *py_minmax(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *o[3];
  int threads;
  if (!PyArg_ParseTuple(args, "OOOi:minmax", &o[0], &o[1], &o[2], &threads)) return NULL;
  static const arg_spec specs[3] = {
      {"x", FLOAT_DTYPES, 3, 0}, {"out_min", DT(MQ_F32), 1, 1}, {"out_max", DT(MQ_F32), 1, 1}};
  mq_view v[3];
  if (view_args(o, specs, v, 3) < 0) return NULL;
  if (v[0].numel == 0) {
    PyErr_SetString(PyExc_ValueError, "argument 'x' is empty: min/max of an empty tensor is undefined");
    return NULL;
  }
  if (expect_len(&v[1], "out_min", v[0].shape[1]) < 0 || expect_len(&v[2], "out_max", v[0].shape[1]) < 0)
    return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_minmax(v[0].data, v[0].dtype, v[0].shape[0], v[0].shape[1], v[0].shape[2], v[1].data,
                 v[2].data, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return kernel_error(st, "minmax");
  Py_RETURN_NONE;
}

static PyObject *py_qparams(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *o[4];
  int qmin, qmax, symmetric;
  if (!PyArg_ParseTuple(args, "OOOOiip:qparams", &o[0], &o[1], &o[2], &o[3], &qmin, &qmax, &symmetric))
    return NULL;
  static const arg_spec specs[4] = {{"min", DT(MQ_F32), 1, 0},
                                    {"max", DT(MQ_F32), 1, 0},
                                    {"out_scale", DT(MQ_F32), 1, 1},
                                    {"out_zero_point", DT(MQ_I32), 1, 1}};
  mq_view v[4];
  if (view_args(o, specs, v, 4) < 0) return NULL;
  const int64_t n = v[0].numel;
  if (expect_len(&v[1], "max", n) < 0 || expect_len(&v[2], "out_scale", n) < 0 ||
      expect_len(&v[3], "out_zero_point", n) < 0)
    return NULL;
  if (qmin >= qmax) {
    PyErr_Format(PyExc_ValueError, "qmin (%d) must be smaller than qmax (%d)", qmin, qmax);
    return NULL;
  }
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_qparams(v[0].data, v[1].data, n, qmin, qmax, symmetric, v[2].data, v[3].data);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return kernel_error(st, "qparams");
  Py_RETURN_NONE;
}

/* quantize(x[outer, C, inner], scale[C], zero_point[C], out_q[outer, C, inner], threads) and
 * dequantize(q, scale, zero_point, out, threads) share their argument checks. */
static int int8_args(PyObject *args, const char *format, const arg_spec *specs, mq_view *v, int *threads) {
  PyObject *o[4];
  if (!PyArg_ParseTuple(args, format, &o[0], &o[1], &o[2], &o[3], threads)) return -1;
  if (view_args(o, specs, v, 4) < 0) return -1;
  const int64_t channels = v[0].shape[1];
  if (expect_len(&v[1], "scale", channels) < 0 || expect_len(&v[2], "zero_point", channels) < 0)
    return -1;
  if (channels == 0) {
    PyErr_SetString(PyExc_ValueError, "the channel dimension is empty");
    return -1;
  }
  return expect_same_shape(&v[0], specs[0].name, &v[3], specs[3].name);
}

static PyObject *py_quantize(PyObject *self, PyObject *args) {
  (void)self;
  static const arg_spec specs[4] = {{"x", FLOAT_DTYPES, 3, 0},
                                    {"scale", DT(MQ_F32), 1, 0},
                                    {"zero_point", DT(MQ_I32), 1, 0},
                                    {"out_q", INT8_DTYPES, 3, 1}};
  mq_view v[4];
  int threads;
  if (int8_args(args, "OOOOi:quantize", specs, v, &threads) < 0) return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_int8_quantize(v[0].data, v[0].dtype, v[0].shape[0], v[0].shape[1], v[0].shape[2],
                        v[1].data, v[2].data, v[3].data, v[3].dtype, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return kernel_error(st, "quantize");
  Py_RETURN_NONE;
}

static PyObject *py_dequantize(PyObject *self, PyObject *args) {
  (void)self;
  static const arg_spec specs[4] = {{"q", INT8_DTYPES, 3, 0},
                                    {"scale", DT(MQ_F32), 1, 0},
                                    {"zero_point", DT(MQ_I32), 1, 0},
                                    {"out", FLOAT_DTYPES, 3, 1}};
  mq_view v[4];
  int threads;
  if (int8_args(args, "OOOOi:dequantize", specs, v, &threads) < 0) return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_int8_dequantize(v[0].data, v[0].dtype, v[0].shape[0], v[0].shape[1], v[0].shape[2],
                          v[1].data, v[2].data, v[3].data, v[3].dtype, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return kernel_error(st, "dequantize");
  Py_RETURN_NONE;
}

static PyObject *py_sqnr(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *o[2];
  int threads;
  if (!PyArg_ParseTuple(args, "OOi:sqnr", &o[0], &o[1], &threads)) return NULL;
  static const arg_spec specs[2] = {{"x", FLOAT_DTYPES, -1, 0}, {"y", FLOAT_DTYPES, -1, 0}};
  mq_view v[2];
  if (view_args(o, specs, v, 2) < 0) return NULL;
  if (v[0].numel != v[1].numel) {
    PyErr_Format(PyExc_ValueError, "sqnr needs tensors of one size; got %lld and %lld elements",
                 (long long)v[0].numel, (long long)v[1].numel);
    return NULL;
  }
  double db = 0.0;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_sqnr(v[0].data, v[0].dtype, v[1].data, v[1].dtype, v[0].numel, &db, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return kernel_error(st, "sqnr");
  return PyFloat_FromDouble(db);
}

/* ---- static quantization: histogram, integer x integer linear ------------------------------ */

static PyObject *py_histogram(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *o[2];
  float lo, hi;
  int threads;
  if (!PyArg_ParseTuple(args, "OffOi:histogram", &o[0], &lo, &hi, &o[1], &threads)) return NULL;
  static const arg_spec specs[2] = {{"x", FLOAT_DTYPES, -1, 0}, {"out_counts", DT(MQ_I64), 1, 1}};
  mq_view v[2];
  if (view_args(o, specs, v, 2) < 0) return NULL;
  if (v[1].numel < 1) {
    PyErr_SetString(PyExc_ValueError, "argument 'out_counts' must hold at least one bin");
    return NULL;
  }
  if (!(lo < hi) || !isfinite(hi - lo) || !isfinite((float)v[1].numel / (hi - lo))) {
    PyErr_Format(PyExc_ValueError,
                 "histogram range [%g, %g] is invalid: lo < hi must hold, with hi - lo finite in "
                 "float32 and not so small that bins / (hi - lo) overflows", lo, hi);
    return NULL;
  }
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_histogram(v[0].data, v[0].dtype, v[0].numel, lo, hi, v[1].numel, v[1].data, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return kernel_error(st, "histogram");
  Py_RETURN_NONE;
}

/* linear_static(x_q[M,K], x_scale, x_zero_point, w_q[N,K], w_scale[N], w_zero_point[N],
 *               bias[N] or None, out[M,N], threads) */
static PyObject *py_linear_static(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *o[6], *bias_obj;
  float x_scale;
  int x_zp, threads;
  if (!PyArg_ParseTuple(args, "OfiOOOOOi:linear_static", &o[0], &x_scale, &x_zp, &o[1], &o[2],
                        &o[3], &bias_obj, &o[5], &threads))
    return NULL;
  o[4] = bias_obj;
  const int has_bias = bias_obj != Py_None;
  static const arg_spec specs[6] = {{"x", INT8_DTYPES, 2, 0},           {"w", INT8_DTYPES, 2, 0},
                                    {"w_scale", DT(MQ_F32), 1, 0},      {"w_zero_point", DT(MQ_I32), 1, 0},
                                    {"bias", DT(MQ_F32), 1, 0},         {"out", FLOAT_DTYPES, 2, 1}};
  mq_view v[6];
  for (int i = 0; i < 6; i++)
    if ((i != 4 || has_bias) && view_arg(o[i], &specs[i], &v[i]) < 0) return NULL;
  const int64_t m = v[0].shape[0], k = v[0].shape[1], n = v[1].shape[0];
  if (v[1].shape[1] != k) {
    PyErr_Format(PyExc_ValueError, "x has %lld input features but w has %lld; they must agree",
                 (long long)k, (long long)v[1].shape[1]);
    return NULL;
  }
  if (n < 1 || k < 1) {
    PyErr_Format(PyExc_ValueError, "w must have at least one row and one column; got [%lld, %lld]",
                 (long long)n, (long long)k);
    return NULL;
  }
  if (expect_len(&v[2], "w_scale", n) < 0 || expect_len(&v[3], "w_zero_point", n) < 0 ||
      (has_bias && expect_len(&v[4], "bias", n) < 0))
    return NULL;
  if (v[5].shape[0] != m || v[5].shape[1] != n) {
    PyErr_Format(PyExc_ValueError, "argument 'out' must have shape [%lld, %lld]; got [%lld, %lld]",
                 (long long)m, (long long)n, (long long)v[5].shape[0], (long long)v[5].shape[1]);
    return NULL;
  }
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_linear_static_int8(v[0].data, v[0].dtype, x_scale, x_zp, v[1].data, v[1].dtype, v[2].data,
                             v[3].data, has_bias ? v[4].data : NULL, m, n, k, v[5].data, v[5].dtype,
                             threads);
  Py_END_ALLOW_THREADS
  if (st == MQ_ERR_ARG) {
    PyErr_SetString(PyExc_ValueError,
                    "linear_static: an argument is out of range: x_scale and every w_scale must be "
                    "finite and > 0 (their products finite), each zero point inside its operand's "
                    "integer range (int8: -128..127, uint8: 0..255), and the bias finite");
    return NULL;
  }
  if (st != MQ_OK) return kernel_error(st, "linear_static");
  Py_RETURN_NONE;
}

/* ---- INT4 group-wise ----------------------------------------------------------------------- */

static int int4_expect_2d(const mq_view *v, const char *name, int64_t rows, int64_t cols) {
  if (v->shape[0] != rows || v->shape[1] != cols) {
    PyErr_Format(PyExc_ValueError, "argument '%s' must have shape [%lld, %lld]; got [%lld, %lld]",
                 name, (long long)rows, (long long)cols, (long long)v->shape[0],
                 (long long)v->shape[1]);
    return -1;
  }
  return 0;
}

static int int4_check_group(long long group_size, int64_t k, const char *k_name) {
  if (group_size != 32 && group_size != 64 && group_size != 128 && group_size != 256) {
    PyErr_Format(PyExc_ValueError, "group_size must be one of 32, 64, 128, 256; got %lld", group_size);
    return -1;
  }
  if (k % group_size != 0) {
    PyErr_Format(PyExc_ValueError,
                 "%s (%lld) must be a multiple of group_size (%lld); pick a group size that "
                 "divides it", k_name, (long long)k, group_size);
    return -1;
  }
  return 0;
}

static PyObject *py_int4_quantize(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *o[4];
  long long group_size;
  int symmetric, method, threads;
  if (!PyArg_ParseTuple(args, "OOOOLpii:int4_quantize", &o[0], &o[1], &o[2], &o[3], &group_size,
                        &symmetric, &method, &threads))
    return NULL;
  static const arg_spec specs[4] = {{"x", FLOAT_DTYPES, 2, 0},
                                    {"out_qweight", DT(MQ_U8), 2, 1},
                                    {"out_scale", DT(MQ_F16), 2, 1},
                                    {"out_zero_point", DT(MQ_U8), 2, 1}};
  mq_view v[4];
  if (view_args(o, specs, v, 4) < 0) return NULL;
  const int64_t n = v[0].shape[0], k = v[0].shape[1];
  if (int4_check_group(group_size, k, "the input dimension of 'x'") < 0) return NULL;
  if (method != MQ_INT4_ABSMAX && method != MQ_INT4_MSE) {
    PyErr_Format(PyExc_ValueError, "method must be %d (absmax) or %d (mse); got %d", MQ_INT4_ABSMAX,
                 MQ_INT4_MSE, method);
    return NULL;
  }
  if (int4_expect_2d(&v[1], "out_qweight", n, k / 2) < 0 ||
      int4_expect_2d(&v[2], "out_scale", n, k / group_size) < 0 ||
      int4_expect_2d(&v[3], "out_zero_point", n, k / group_size) < 0)
    return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_int4_quantize_pack(v[0].data, v[0].dtype, n, k, group_size, symmetric,
                             (mq_int4_scale_method)method, v[1].data, v[2].data, v[3].data, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return kernel_error(st, "int4_quantize");
  Py_RETURN_NONE;
}

static PyObject *py_int4_dequantize(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *o[4];
  long long group_size;
  int threads;
  if (!PyArg_ParseTuple(args, "OOOOLi:int4_dequantize", &o[0], &o[1], &o[2], &o[3], &group_size,
                        &threads))
    return NULL;
  static const arg_spec specs[4] = {{"qweight", DT(MQ_U8), 2, 0},
                                    {"scale", DT(MQ_F16), 2, 0},
                                    {"zero_point", DT(MQ_U8), 2, 0},
                                    {"out", FLOAT_DTYPES, 2, 1}};
  mq_view v[4];
  if (view_args(o, specs, v, 4) < 0) return NULL;
  const int64_t n = v[0].shape[0], k = 2 * v[0].shape[1];
  if (int4_check_group(group_size, k, "2 * qweight.shape[1]") < 0) return NULL;
  if (int4_expect_2d(&v[1], "scale", n, k / group_size) < 0 ||
      int4_expect_2d(&v[2], "zero_point", n, k / group_size) < 0 ||
      int4_expect_2d(&v[3], "out", n, k) < 0)
    return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_int4_unpack_dequantize(v[0].data, v[1].data, v[2].data, n, k, group_size, v[3].data,
                                 v[3].dtype, threads);
  Py_END_ALLOW_THREADS
  if (st == MQ_ERR_ARG) {
    PyErr_SetString(PyExc_ValueError, "int4_dequantize: every scale must be finite and > 0 and "
                    "every zero_point at most 15; these tensors are not an INT4 weight");
    return NULL;
  }
  if (st != MQ_OK) return kernel_error(st, "int4_dequantize");
  Py_RETURN_NONE;
}

/* pack(nibbles[n, k], out_qweight[n, k/2]) and unpack(qweight[n, k/2], out_nibbles[n, k]). */
static PyObject *int4_nibbles(PyObject *args, const char *format, const arg_spec *specs, int pack) {
  PyObject *o[2];
  int threads;
  if (!PyArg_ParseTuple(args, format, &o[0], &o[1], &threads)) return NULL;
  mq_view v[2];
  if (view_args(o, specs, v, 2) < 0) return NULL;
  const mq_view *nib = pack ? &v[0] : &v[1], *packed = pack ? &v[1] : &v[0];
  const int64_t n = nib->shape[0], k = nib->shape[1];
  if (k % 2 != 0) {
    PyErr_Format(PyExc_ValueError, "argument '%s' must have an even number of columns; got %lld",
                 specs[pack ? 0 : 1].name, (long long)k);
    return NULL;
  }
  if (int4_expect_2d(packed, specs[pack ? 1 : 0].name, n, k / 2) < 0) return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = pack ? mq_int4_pack(v[0].data, n, k, v[1].data, threads)
            : mq_int4_unpack(v[0].data, n, k, v[1].data, threads);
  Py_END_ALLOW_THREADS
  if (st == MQ_ERR_ARG) {
    PyErr_SetString(PyExc_ValueError, "int4_pack: nibbles must be 0..15; mask them with & 15");
    return NULL;
  }
  if (st != MQ_OK) return kernel_error(st, pack ? "int4_pack" : "int4_unpack");
  Py_RETURN_NONE;
}

static PyObject *py_int4_pack(PyObject *self, PyObject *args) {
  (void)self;
  static const arg_spec specs[2] = {{"nibbles", DT(MQ_U8), 2, 0}, {"out_qweight", DT(MQ_U8), 2, 1}};
  return int4_nibbles(args, "OOi:int4_pack", specs, 1);
}

static PyObject *py_int4_unpack(PyObject *self, PyObject *args) {
  (void)self;
  static const arg_spec specs[2] = {{"qweight", DT(MQ_U8), 2, 0}, {"out_nibbles", DT(MQ_U8), 2, 1}};
  return int4_nibbles(args, "OOi:int4_unpack", specs, 0);
}

/* ---- LINEAR: quantized Linear forward -------------------------------------------------- */

/* Raise the exception for a failed linear call.  `fmt` names the format ("INT8" / "INT4"). */
static PyObject *linear_error(mq_status st, const char *what, const char *fmt, long long n,
                              long long k, long long g) {
  char group[48] = "";
  if (g > 0) snprintf(group, sizeof group, ", group_size=%lld", g);
  switch (st) {
    case MQ_ERR_LAYOUT:
      PyErr_Format(PyExc_ValueError,
                   "%s: argument 'packed' does not hold a packed %s weight with out_features=%lld, "
                   "in_features=%lld%s (another layer's, or packed by another version of "
                   "mono_quant); re-pack the canonical weights with pack_linear_%s",
                   what, fmt, n, k, group, g > 0 ? "int4" : "int8");
      break;
    case MQ_ERR_NONFINITE:
      PyErr_Format(PyExc_ValueError,
                   "%s: the input x contains NaN or Inf; the %s kernel quantizes activations to "
                   "int8 and needs finite values (check the previous layer, or torch.nan_to_num)",
                   what, fmt);
      break;
    case MQ_ERR_ARG:
      if (g > 0)
        PyErr_Format(PyExc_ValueError,
                     "%s: group_size must be one of 32, 64, 128, 256 (got %lld), scales finite "
                     "and > 0 and zero points in 0..15", what, g);
      else
        PyErr_Format(PyExc_ValueError,
                     "%s: scales must be finite and > 0, and zero points within the range of "
                     "qweight's dtype (-128..127 for int8, 0..255 for uint8)", what);
      break;
    case MQ_ERR_SHAPE:
      PyErr_Format(PyExc_ValueError,
                   "%s: sizes out of range (out_features=%lld, in_features=%lld%s; in_features "
                   "must be a multiple of group_size for INT4)", what, n, k, group);
      break;
    default: return kernel_error(st, what);
  }
  return NULL;
}

static int expect_dims(const mq_view *v, const char *name, int64_t d0, int64_t d1, const char *what) {
  if (v->shape[0] != d0 || v->shape[1] != d1) {
    PyErr_Format(PyExc_ValueError, "argument '%s' must have shape [%lld, %lld] (%s); got [%lld, %lld]",
                 name, (long long)d0, (long long)d1, what, (long long)v->shape[0],
                 (long long)v->shape[1]);
    return -1;
  }
  return 0;
}

static PyObject *py_linear_int8_packed_size(PyObject *self, PyObject *args) {
  (void)self;
  long long n, k;
  if (!PyArg_ParseTuple(args, "LL:linear_int8_packed_size", &n, &k)) return NULL;
  int64_t bytes = 0;
  mq_status st = mq_linear_int8_packed_size(n, k, &bytes);
  if (st != MQ_OK) return linear_error(st, "linear_int8_packed_size", "INT8", n, k, 0);
  return PyLong_FromLongLong(bytes);
}

static PyObject *py_linear_int4_packed_size(PyObject *self, PyObject *args) {
  (void)self;
  long long n, k, g;
  if (!PyArg_ParseTuple(args, "LLL:linear_int4_packed_size", &n, &k, &g)) return NULL;
  int64_t bytes = 0;
  mq_status st = mq_linear_int4_packed_size(n, k, g, &bytes);
  if (st != MQ_OK) return linear_error(st, "linear_int4_packed_size", "INT4", n, k, g);
  return PyLong_FromLongLong(bytes);
}

static PyObject *py_linear_int8_pack(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *o[4];
  int threads;
  if (!PyArg_ParseTuple(args, "OOOOi:linear_int8_pack", &o[0], &o[1], &o[2], &o[3], &threads))
    return NULL;
  static const arg_spec specs[4] = {{"qweight", INT8_DTYPES, 2, 0},
                                    {"scale", DT(MQ_F32), 1, 0},
                                    {"zero_point", DT(MQ_I32), 1, 0},
                                    {"out_packed", DT(MQ_U8), 1, 1}};
  mq_view v[4];
  if (view_args(o, specs, v, 4) < 0) return NULL;
  const int64_t n = v[0].shape[0], k = v[0].shape[1];
  if (expect_len(&v[1], "scale", n) < 0 || expect_len(&v[2], "zero_point", n) < 0) return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_linear_int8_pack(v[0].data, v[0].dtype, v[1].data, v[2].data, n, k, v[3].data,
                           v[3].numel, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return linear_error(st, "pack_linear_int8", "INT8", n, k, 0);
  Py_RETURN_NONE;
}

static PyObject *py_linear_int4_pack(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *o[4];
  long long g;
  int threads;
  if (!PyArg_ParseTuple(args, "OOOLOi:linear_int4_pack", &o[0], &o[1], &o[2], &g, &o[3], &threads))
    return NULL;
  static const arg_spec specs[4] = {{"qweight", DT(MQ_U8), 2, 0},
                                    {"scale", DT(MQ_F16), 2, 0},
                                    {"zero_point", DT(MQ_U8), 2, 0},
                                    {"out_packed", DT(MQ_U8), 1, 1}};
  mq_view v[4];
  if (view_args(o, specs, v, 4) < 0) return NULL;
  const int64_t n = v[0].shape[0], k = 2 * v[0].shape[1];
  if (g != 32 && g != 64 && g != 128 && g != 256)
    return linear_error(MQ_ERR_ARG, "pack_linear_int4", "INT4", n, k, g);
  if (expect_dims(&v[1], "scale", n, k / g, "[out_features, in_features // group_size]") < 0 ||
      expect_dims(&v[2], "zero_point", n, k / g, "[out_features, in_features // group_size]") < 0)
    return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_linear_int4_pack(v[0].data, v[1].data, v[2].data, n, k, g, v[3].data, v[3].numel, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return linear_error(st, "pack_linear_int4", "INT4", n, k, g);
  Py_RETURN_NONE;
}

/* linear_int8(x, packed, n, k, bias|None, out, threads) and
 * linear_int4(x, packed, n, k, g, bias|None, out, threads) */
static PyObject *linear_call(PyObject *args, int int4) {
  PyObject *o[4], *bias_obj;
  long long n, k, g = 0;
  int threads;
  const char *what = int4 ? "linear_int4" : "linear_int8";
  int ok = int4 ? PyArg_ParseTuple(args, "OOLLLOOi:linear_int4", &o[0], &o[1], &n, &k, &g,
                                   &bias_obj, &o[2], &threads)
                : PyArg_ParseTuple(args, "OOLLOOi:linear_int8", &o[0], &o[1], &n, &k, &bias_obj,
                                   &o[2], &threads);
  if (!ok) return NULL;
  static const arg_spec specs[4] = {{"x", FLOAT_DTYPES, 2, 0},
                                    {"packed", DT(MQ_U8), 1, 0},
                                    {"out", FLOAT_DTYPES, 2, 1},
                                    {"bias", FLOAT_DTYPES, 1, 0}};
  mq_view v[4];
  const int has_bias = bias_obj != Py_None;
  o[3] = bias_obj;
  if (view_args(o, specs, v, has_bias ? 4 : 3) < 0) return NULL;
  const int64_t m = v[0].shape[0];
  if (v[0].shape[1] != k) {
    PyErr_Format(PyExc_ValueError, "%s: x has %lld features in its last dimension; the layer takes "
                 "in_features=%lld", what, (long long)v[0].shape[1], k);
    return NULL;
  }
  if (expect_dims(&v[2], "out", m, n, "[batch, out_features]") < 0) return NULL;
  if (v[2].dtype != v[0].dtype) {
    PyErr_Format(PyExc_TypeError, "%s: out must have x's dtype %s; got %s", what,
                 mq_dtype_name(v[0].dtype), mq_dtype_name(v[2].dtype));
    return NULL;
  }
  if (has_bias && expect_len(&v[3], "bias", n) < 0) return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  if (int4)
    st = mq_linear_int4(v[0].data, v[0].dtype, m, v[1].data, v[1].numel, n, k, g,
                        has_bias ? v[3].data : NULL, has_bias ? v[3].dtype : MQ_F32, v[2].data, threads);
  else
    st = mq_linear_int8(v[0].data, v[0].dtype, m, v[1].data, v[1].numel, n, k,
                        has_bias ? v[3].data : NULL, has_bias ? v[3].dtype : MQ_F32, v[2].data, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return linear_error(st, what, int4 ? "INT4" : "INT8", n, k, g);
  Py_RETURN_NONE;
}

static PyObject *py_linear_int8(PyObject *self, PyObject *args) {
  (void)self;
  return linear_call(args, 0);
}

static PyObject *py_linear_int4(PyObject *self, PyObject *args) {
  (void)self;
  return linear_call(args, 1);
}

static const char *const linear_isa_names[] = {"portable", "avx2", "avx512_vnni"};

static PyObject *py_linear_isas(PyObject *self, PyObject *args) {
  (void)self;
  (void)args;
  PyObject *list = PyList_New(0);
  if (list == NULL) return NULL;
  for (size_t i = 0; i < sizeof linear_isa_names / sizeof linear_isa_names[0]; i++) {
    if (!mq_linear_isa_supported(linear_isa_names[i])) continue;
    PyObject *name = PyUnicode_FromString(linear_isa_names[i]);
    if (name == NULL || PyList_Append(list, name) < 0) {
      Py_XDECREF(name);
      Py_DECREF(list);
      return NULL;
    }
    Py_DECREF(name);
  }
  return list;
}

static PyObject *py_set_linear_isa(PyObject *self, PyObject *args) {
  (void)self;
  const char *name;
  if (!PyArg_ParseTuple(args, "s:set_linear_isa", &name)) return NULL;
  const char *before = mq_linear_isa_name();
  if (mq_linear_set_isa(name) != MQ_OK) {
    PyErr_Format(PyExc_ValueError,
                 "linear kernel '%s' cannot run here; pick one of linear_isas() or 'auto'", name);
    return NULL;
  }
  return PyUnicode_FromString(before);
}

/* ---- module definition -------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"cpu_features", py_cpu_features, METH_NOARGS,
     "cpu_features() -> dict: SIMD features detected (and usable) on this CPU."},
    {"minmax", py_minmax, METH_VARARGS,
     "minmax(x[outer,C,inner], out_min[C], out_max[C], num_threads): per-channel min and max."},
    {"qparams", py_qparams, METH_VARARGS,
     "qparams(min, max, out_scale, out_zero_point, qmin, qmax, symmetric): scales and zero points."},
    {"quantize", py_quantize, METH_VARARGS,
     "quantize(x[outer,C,inner], scale[C], zero_point[C], out_q, num_threads): INT8 quantization."},
    {"dequantize", py_dequantize, METH_VARARGS,
     "dequantize(q[outer,C,inner], scale[C], zero_point[C], out, num_threads): INT8 -> float."},
    {"sqnr", py_sqnr, METH_VARARGS, "sqnr(x, y, num_threads) -> float: SQNR of y against x in dB."},
    /* static quantization */
    {"histogram", py_histogram, METH_VARARGS,
     "histogram(x, lo, hi, out_counts[int64 bins], num_threads): counts over equal bins of [lo, hi]."},
    {"linear_static", py_linear_static, METH_VARARGS,
     "linear_static(x_q[M,K], x_scale, x_zero_point, w_q[N,K], w_scale[N], w_zero_point[N], "
     "bias[N] or None, out[M,N], num_threads): integer x integer linear, float out."},
    /* INT4 group-wise */
    {"int4_quantize", py_int4_quantize, METH_VARARGS,
     "int4_quantize(x[n,k], out_qweight[n,k/2], out_scale[n,k/g], out_zero_point[n,k/g], g, "
     "symmetric, method, num_threads): INT4 group-wise quantize + pack (method 0 absmax, 1 mse)."},
    {"int4_dequantize", py_int4_dequantize, METH_VARARGS,
     "int4_dequantize(qweight[n,k/2], scale[n,k/g], zero_point[n,k/g], out[n,k], g, num_threads)."},
    {"int4_pack", py_int4_pack, METH_VARARGS,
     "int4_pack(nibbles[n,k], out_qweight[n,k/2], num_threads): two nibbles per byte, even k low."},
    {"int4_unpack", py_int4_unpack, METH_VARARGS,
     "int4_unpack(qweight[n,k/2], out_nibbles[n,k], num_threads): the inverse of int4_pack."},
    /* LINEAR */
    {"linear_int8_packed_size", py_linear_int8_packed_size, METH_VARARGS,
     "linear_int8_packed_size(n, k) -> int: bytes of a packed INT8 [n, k] weight."},
    {"linear_int8_pack", py_linear_int8_pack, METH_VARARGS,
     "linear_int8_pack(qweight[n,k], scale[n], zero_point[n], out_packed, num_threads)."},
    {"linear_int8", py_linear_int8, METH_VARARGS,
     "linear_int8(x[m,k], packed, n, k, bias|None, out[m,n], num_threads): quantized Linear."},
    {"linear_int4_packed_size", py_linear_int4_packed_size, METH_VARARGS,
     "linear_int4_packed_size(n, k, group_size) -> int: bytes of a packed INT4 [n, k] weight."},
    {"linear_int4_pack", py_linear_int4_pack, METH_VARARGS,
     "linear_int4_pack(qweight[n,k/2], scale[n,k/g], zero_point[n,k/g], g, out_packed, num_threads)."},
    {"linear_int4", py_linear_int4, METH_VARARGS,
     "linear_int4(x[m,k], packed, n, k, g, bias|None, out[m,n], num_threads): quantized Linear."},
    {"linear_isas", py_linear_isas, METH_NOARGS,
     "linear_isas() -> list: the quantized Linear paths this CPU can run, best last."},
    {"set_linear_isa", py_set_linear_isa, METH_VARARGS,
     "set_linear_isa(name) -> str: test hook, force a Linear path ('auto' = best); returns the previous."},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *module) {
  return PyModule_AddIntConstant(module, "DLPACK_MAJOR_VERSION", DLPACK_MAJOR_VERSION);
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, (void *)module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mono_quant._C",
    .m_doc = "mono_quant's C kernels. Use the mono_quant package; these functions take DLPack capsules.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModuleDef_Init(&module_def); }
