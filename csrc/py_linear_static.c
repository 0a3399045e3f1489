/* py_linear_static.c : entry points of the packed static-INT8 Linear (linear_static_packed.c):
 * its packer and its forward.  (The canonical-weight kernel linear_static is in py_linear.c.) */
#include "py_args.h"
#include "py_methods.h"

static PyObject *static_error(mq_status st, const char *what, long long n, long long k) {
  switch (st) {
    case MQ_ERR_LAYOUT:
      PyErr_Format(PyExc_ValueError,
                   "%s: argument 'packed' does not hold a packed static INT8 weight with "
                   "out_features=%lld, in_features=%lld (another layer's, or packed by another "
                   "version of mono_quant); re-pack the canonical weights with pack_linear_static",
                   what, n, k);
      break;
    case MQ_ERR_NONFINITE:
      PyErr_Format(PyExc_ValueError,
                   "%s: the input x contains NaN or Inf; the static INT8 kernel quantizes it with "
                   "the calibrated scale and needs finite values (check the previous layer, or "
                   "torch.nan_to_num)", what);
      break;
    case MQ_ERR_ARG:
      PyErr_Format(PyExc_ValueError,
                   "%s: an argument is out of range: the input scale and every weight scale must "
                   "be finite and > 0 (their products finite), each zero point inside its "
                   "operand's integer range (int8: -128..127, uint8: 0..255), and the bias finite",
                   what);
      break;
    case MQ_ERR_SHAPE:
      PyErr_Format(PyExc_ValueError, "%s: sizes out of range (out_features=%lld, in_features=%lld)",
                   what, n, k);
      break;
    default: return kernel_error(st, what);
  }
  return NULL;
}

PyObject *py_linear_static_packed_size(PyObject *self, PyObject *args) {
  (void)self;
  long long n, k;
  if (!PyArg_ParseTuple(args, "LL:linear_static_packed_size", &n, &k)) return NULL;
  int64_t bytes = 0;
  mq_status st = mq_linear_static_packed_size(n, k, &bytes);
  if (st != MQ_OK) return static_error(st, "linear_static_packed_size", n, k);
  return PyLong_FromLongLong(bytes);
}

/* linear_static_pack(qweight[n,k], scale[n], zero_point[n], out_packed, threads) */
PyObject *py_linear_static_pack(PyObject *self, PyObject *args) {
  (void)self;
  mq_view v[4];
  int64_t n, k;
  int threads;
  if (parse_int8_pack_args(args, "OOOOi:linear_static_pack", v, &n, &k, &threads) < 0) return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_linear_static_pack(v[0].data, v[0].dtype, v[1].data, v[2].data, n, k, v[3].data,
                             v[3].numel, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return static_error(st, "pack_linear_static", n, k);
  Py_RETURN_NONE;
}

/* linear_static_packed(x[m,k], x_scale, x_zero_point, x_symmetric, packed, n, k, bias|None,
 *                      out[m,n], threads) */
PyObject *py_linear_static_packed(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *o[4], *bias_obj;
  float x_scale;
  int x_zp, x_symmetric, threads;
  long long n, k;
  if (!PyArg_ParseTuple(args, "OfipOLLOOi:linear_static_packed", &o[0], &x_scale, &x_zp,
                        &x_symmetric, &o[1], &n, &k, &bias_obj, &o[2], &threads))
    return NULL;
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
    PyErr_Format(PyExc_ValueError, "linear_static_packed: x has %lld features in its last "
                 "dimension; the layer takes in_features=%lld", (long long)v[0].shape[1], k);
    return NULL;
  }
  if (v[2].shape[0] != m || v[2].shape[1] != n) {
    PyErr_Format(PyExc_ValueError, "argument 'out' must have shape [%lld, %lld]; got [%lld, %lld]",
                 (long long)m, n, (long long)v[2].shape[0], (long long)v[2].shape[1]);
    return NULL;
  }
  if (v[2].dtype != v[0].dtype) {
    PyErr_Format(PyExc_TypeError, "linear_static_packed: out must have x's dtype %s; got %s",
                 mq_dtype_name(v[0].dtype), mq_dtype_name(v[2].dtype));
    return NULL;
  }
  if (has_bias && expect_len(&v[3], "bias", n) < 0) return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_linear_static_packed(v[0].data, v[0].dtype, m, x_scale, x_zp, x_symmetric ? MQ_I8 : MQ_U8,
                               v[1].data, v[1].numel, n, k, has_bias ? v[3].data : NULL,
                               has_bias ? v[3].dtype : MQ_F32, v[2].data, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return static_error(st, "linear_static_packed", n, k);
  Py_RETURN_NONE;
}

PyObject *py_linear_static_isa(PyObject *self, PyObject *args) {
  (void)self;
  (void)args;
  return PyUnicode_FromString(mq_linear_static_isa_name());
}
