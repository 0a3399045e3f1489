/* py_linear.c : entry points of the Linear forward kernels (linear*.c, linear_static.c), their
 * packers, and the CPU-feature / dispatch queries (cpu.c). */
#include <stdio.h>

#include "py_args.h"
#include "py_methods.h"
#include "threadpool.h"

PyObject *py_cpu_features(PyObject *self, PyObject *args) {
  (void)self;
  (void)args;
  unsigned f = mq_cpu_detect();
  int64_t min_batch;
  const char *batch = mq_linear_batch_name(&min_batch);
  return Py_BuildValue("{s:O,s:O,s:O,s:O,s:s,s:z,s:L,s:s}", "avx2", (f & MQ_CPU_AVX2) ? Py_True : Py_False,
                       "avx512", (f & MQ_CPU_AVX512) ? Py_True : Py_False, "avx512_vnni",
                       (f & MQ_CPU_VNNI) ? Py_True : Py_False, "amx", (f & MQ_CPU_AMX) ? Py_True : Py_False,
                       "linear_kernel", mq_linear_isa_name(), "linear_batch_kernel", batch,
                       "linear_batch_min", (long long)min_batch, "threads", mq_threadpool_kind());
}

/* ---- static quantization: integer x integer linear ----------------------------------------- */

/* linear_static(x_q[M,K], x_scale, x_zero_point, w_q[N,K], w_scale[N], w_zero_point[N],
 *               bias[N] or None, out[M,N], threads) */
PyObject *py_linear_static(PyObject *self, PyObject *args) {
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

PyObject *py_linear_int8_packed_size(PyObject *self, PyObject *args) {
  (void)self;
  long long n, k;
  if (!PyArg_ParseTuple(args, "LL:linear_int8_packed_size", &n, &k)) return NULL;
  int64_t bytes = 0;
  mq_status st = mq_linear_int8_packed_size(n, k, &bytes);
  if (st != MQ_OK) return linear_error(st, "linear_int8_packed_size", "INT8", n, k, 0);
  return PyLong_FromLongLong(bytes);
}

PyObject *py_linear_int4_packed_size(PyObject *self, PyObject *args) {
  (void)self;
  long long n, k, g;
  if (!PyArg_ParseTuple(args, "LLL:linear_int4_packed_size", &n, &k, &g)) return NULL;
  int64_t bytes = 0;
  mq_status st = mq_linear_int4_packed_size(n, k, g, &bytes);
  if (st != MQ_OK) return linear_error(st, "linear_int4_packed_size", "INT4", n, k, g);
  return PyLong_FromLongLong(bytes);
}

PyObject *py_linear_int8_pack(PyObject *self, PyObject *args) {
  (void)self;
  mq_view v[4];
  int64_t n, k;
  int threads;
  if (parse_int8_pack_args(args, "OOOOi:linear_int8_pack", v, &n, &k, &threads) < 0) return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_linear_int8_pack(v[0].data, v[0].dtype, v[1].data, v[2].data, n, k, v[3].data,
                           v[3].numel, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return linear_error(st, "pack_linear_int8", "INT8", n, k, 0);
  Py_RETURN_NONE;
}

PyObject *py_linear_int4_pack(PyObject *self, PyObject *args) {
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

PyObject *py_linear_int8(PyObject *self, PyObject *args) {
  (void)self;
  return linear_call(args, 0);
}

PyObject *py_linear_int4(PyObject *self, PyObject *args) {
  (void)self;
  return linear_call(args, 1);
}

static const char *const linear_isa_names[] = {"portable", "avx2", "avx512_vnni", "amx"};

PyObject *py_linear_isas(PyObject *self, PyObject *args) {
  (void)self;
  (void)args;
  return supported_names(linear_isa_names, sizeof linear_isa_names / sizeof linear_isa_names[0],
                         mq_linear_isa_supported);
}

PyObject *py_set_linear_isa(PyObject *self, PyObject *args) {
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

PyObject *py_linear_isa_supported(PyObject *self, PyObject *args) {
  (void)self;
  const char *name;
  if (!PyArg_ParseTuple(args, "s:linear_isa_supported", &name)) return NULL;
  return PyBool_FromLong(mq_linear_isa_supported(name));
}

PyObject *py_set_linear_gemm_min_batch(PyObject *self, PyObject *args) {
  (void)self;
  long long m;
  if (!PyArg_ParseTuple(args, "L:set_linear_gemm_min_batch", &m)) return NULL;
  if (m < 0) {
    PyErr_Format(PyExc_ValueError, "min_batch must be >= 0 (0 = each path's own threshold); got %lld", m);
    return NULL;
  }
  return PyLong_FromLongLong((long long)mq_linear_set_gemm_min_batch((int64_t)m));
}
