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
#include <stdio.h>

#include "dlpack.h"
#include "mono_quant.h"
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
  return Py_BuildValue("{s:O,s:O,s:O,s:s}", "avx2", (f & MQ_CPU_AVX2) ? Py_True : Py_False, "avx512",
                       (f & MQ_CPU_AVX512) ? Py_True : Py_False, "avx512_vnni",
                       (f & MQ_CPU_VNNI) ? Py_True : Py_False, "linear_kernel", mq_linear_isa_name());
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
