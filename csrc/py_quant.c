/* py_quant.c : entry points of the quantization kernels: scale / zero point, INT8 quantize
 * and dequantize (qparams.c, int8.c), INT4 group-wise quantize, dequantize, pack and unpack
 * (int4.c). */
#include "py_args.h"
#include "py_methods.h"

PyObject *py_qparams(PyObject *self, PyObject *args) {
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

PyObject *py_quantize(PyObject *self, PyObject *args) {
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

PyObject *py_dequantize(PyObject *self, PyObject *args) {
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

PyObject *py_int4_quantize(PyObject *self, PyObject *args) {
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

PyObject *py_int4_dequantize(PyObject *self, PyObject *args) {
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

PyObject *py_int4_pack(PyObject *self, PyObject *args) {
  (void)self;
  static const arg_spec specs[2] = {{"nibbles", DT(MQ_U8), 2, 0}, {"out_qweight", DT(MQ_U8), 2, 1}};
  return int4_nibbles(args, "OOi:int4_pack", specs, 1);
}

PyObject *py_int4_unpack(PyObject *self, PyObject *args) {
  (void)self;
  static const arg_spec specs[2] = {{"qweight", DT(MQ_U8), 2, 0}, {"out_nibbles", DT(MQ_U8), 2, 1}};
  return int4_nibbles(args, "OOi:int4_unpack", specs, 0);
}
