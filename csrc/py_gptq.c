/* py_gptq.c : entry points of the GPTQ kernels (gptq.c): the Hessian of a layer's inputs, the
 * column loop, and the dispatch queries of their inner loops. */
#include "py_args.h"
#include "py_methods.h"

static PyObject *gptq_error(mq_status st, const char *what) {
  switch (st) {
    case MQ_ERR_NONFINITE:
      PyErr_Format(PyExc_ValueError,
                   "%s: NaN or Inf in the layer's inputs, weight or Hessian factor; GPTQ "
                   "needs finite values (check the calibration data and the model's activations)",
                   what);
      break;
    case MQ_ERR_ARG:
      PyErr_Format(PyExc_ValueError,
                   "%s: an argument is out of range (group_size one of 32, 64, 128, 256; "
                   "block_size >= 1; scales finite and > 0; zero points 0..15; v[i][i] > 0; "
                   "perm a permutation of 0..k-1)", what);
      break;
    default: return kernel_error(st, what);
  }
  return NULL;
}

/* gptq_hessian_add(x[rows, k], mask[rows] uint8 or None, h[k, k] float64, threads) -> counted */
PyObject *py_gptq_hessian_add(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *o[3], *mask_obj;
  int threads;
  if (!PyArg_ParseTuple(args, "OOOi:gptq_hessian_add", &o[0], &mask_obj, &o[1], &threads)) return NULL;
  o[2] = mask_obj;
  static const arg_spec specs[3] = {{"x", FLOAT_DTYPES, 2, 0},
                                    {"h", DT(MQ_F64), 2, 1},
                                    {"mask", DT(MQ_U8), 1, 0}};
  const int has_mask = mask_obj != Py_None;
  mq_view v[3];
  if (view_args(o, specs, v, has_mask ? 3 : 2) < 0) return NULL;
  const int64_t rows = v[0].shape[0], k = v[0].shape[1];
  if (k < 1) {
    PyErr_SetString(PyExc_ValueError, "argument 'x' must have at least one column");
    return NULL;
  }
  if (v[1].shape[0] != k || v[1].shape[1] != k) {
    PyErr_Format(PyExc_ValueError, "argument 'h' must have shape [%lld, %lld] (x has %lld columns); "
                 "got [%lld, %lld]", (long long)k, (long long)k, (long long)k,
                 (long long)v[1].shape[0], (long long)v[1].shape[1]);
    return NULL;
  }
  if (has_mask && expect_len(&v[2], "mask", rows) < 0) return NULL;
  int64_t counted = 0;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_gptq_hessian_add(v[0].data, v[0].dtype, rows, k, has_mask ? v[2].data : NULL, v[1].data,
                           &counted, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return gptq_error(st, "gptq_hessian_add");
  return PyLong_FromLongLong(counted);
}

static int expect_shape2(const mq_view *v, const char *name, int64_t d0, int64_t d1) {
  if (v->shape[0] != d0 || v->shape[1] != d1) {
    PyErr_Format(PyExc_ValueError, "argument '%s' must have shape [%lld, %lld]; got [%lld, %lld]",
                 name, (long long)d0, (long long)d1, (long long)v->shape[0], (long long)v->shape[1]);
    return -1;
  }
  return 0;
}

/* gptq_int4(w[n,k] f32, v[k,k] f32, perm[k] int64 or None, scale[n,k/g] f16,
 *           zero_point[n,k/g] u8, g, block_size, out_qweight[n,k/2] u8, threads) */
PyObject *py_gptq_int4(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *o[6], *perm_obj;
  long long g, block;
  int threads;
  if (!PyArg_ParseTuple(args, "OOOOOLLOi:gptq_int4", &o[0], &o[1], &perm_obj, &o[2], &o[3], &g,
                        &block, &o[4], &threads))
    return NULL;
  o[5] = perm_obj;
  static const arg_spec specs[6] = {{"w", DT(MQ_F32), 2, 0},         {"v", DT(MQ_F32), 2, 0},
                                    {"scale", DT(MQ_F16), 2, 0},     {"zero_point", DT(MQ_U8), 2, 0},
                                    {"out_qweight", DT(MQ_U8), 2, 1}, {"perm", DT(MQ_I64), 1, 0}};
  const int has_perm = perm_obj != Py_None;
  mq_view v[6];
  if (view_args(o, specs, v, has_perm ? 6 : 5) < 0) return NULL;
  const int64_t n = v[0].shape[0], k = v[0].shape[1];
  if (g != 32 && g != 64 && g != 128 && g != 256) {
    PyErr_Format(PyExc_ValueError, "group_size must be one of 32, 64, 128, 256; got %lld", g);
    return NULL;
  }
  if (k < 1 || k % g != 0) {
    PyErr_Format(PyExc_ValueError, "the weight's in_features (%lld) must be a positive multiple of "
                 "group_size (%lld)", (long long)k, g);
    return NULL;
  }
  if (block < 1) {
    PyErr_Format(PyExc_ValueError, "block_size must be >= 1; got %lld", block);
    return NULL;
  }
  if (expect_shape2(&v[1], "v", k, k) < 0 || expect_shape2(&v[2], "scale", n, k / g) < 0 ||
      expect_shape2(&v[3], "zero_point", n, k / g) < 0 ||
      expect_shape2(&v[4], "out_qweight", n, k / 2) < 0 || (has_perm && expect_len(&v[5], "perm", k) < 0))
    return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_gptq_int4(v[0].data, v[1].data, has_perm ? v[5].data : NULL, v[2].data, v[3].data, n, k,
                    g, block, v[4].data, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return gptq_error(st, "gptq_int4");
  Py_RETURN_NONE;
}

static const char *const gptq_isa_names[] = {"portable", "avx2", "avx512"};

PyObject *py_gptq_isas(PyObject *self, PyObject *args) {
  (void)self;
  (void)args;
  return supported_names(gptq_isa_names, sizeof gptq_isa_names / sizeof gptq_isa_names[0],
                         mq_gptq_isa_supported);
}

PyObject *py_set_gptq_isa(PyObject *self, PyObject *args) {
  (void)self;
  const char *name;
  if (!PyArg_ParseTuple(args, "s:set_gptq_isa", &name)) return NULL;
  const char *before = mq_gptq_isa_name();
  if (mq_gptq_set_isa(name) != MQ_OK) {
    PyErr_Format(PyExc_ValueError, "GPTQ kernel '%s' cannot run here; pick one of gptq_isas() or 'auto'",
                 name);
    return NULL;
  }
  return PyUnicode_FromString(before);
}
