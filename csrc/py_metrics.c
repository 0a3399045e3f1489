/* py_metrics.c : entry points of the reductions (metrics.c): per-channel min/max, SQNR and
 * histograms. */
#include <math.h>

#include "py_args.h"
#include "py_methods.h"

PyObject *py_minmax(PyObject *self, PyObject *args) {
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

PyObject *py_sqnr(PyObject *self, PyObject *args) {
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

/* ---- histogram (static quantization's observers) ------------------------------------------- */

PyObject *py_histogram(PyObject *self, PyObject *args) {
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
