/* py_embedding.c : entry points of the per-row INT8 embedding kernels (embedding.c). */
#include "py_args.h"
#include "py_methods.h"

/* The table q[rows, dim] with scale[rows] and zero_point[rows]: views 0..2 of `v`. */
static int table_args(const mq_view *v) {
  const int64_t rows = v[0].shape[0], dim = v[0].shape[1];
  if (rows < 1 || dim < 1) {
    PyErr_Format(PyExc_ValueError, "argument 'q' must have at least one row and one column; got [%lld, %lld]",
                 (long long)rows, (long long)dim);
    return -1;
  }
  return expect_len(&v[1], "scale", rows) < 0 || expect_len(&v[2], "zero_point", rows) < 0 ? -1 : 0;
}

static int expect_out(const mq_view *out, int64_t n, int64_t dim) {
  if (out->shape[0] != n || out->shape[1] != dim) {
    PyErr_Format(PyExc_ValueError, "argument 'out' must have shape [%lld, %lld]; got [%lld, %lld]",
                 (long long)n, (long long)dim, (long long)out->shape[0], (long long)out->shape[1]);
    return -1;
  }
  return 0;
}

/* embedding_int8_gather(q, scale, zero_point, idx, out, threads) */
PyObject *py_embedding_int8_gather(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *o[5];
  int threads;
  if (!PyArg_ParseTuple(args, "OOOOOi:embedding_int8_gather", &o[0], &o[1], &o[2], &o[3], &o[4], &threads))
    return NULL;
  static const arg_spec specs[5] = {{"q", INT8_DTYPES, 2, 0},
                                    {"scale", DT(MQ_F32), 1, 0},
                                    {"zero_point", DT(MQ_I32), 1, 0},
                                    {"idx", DT(MQ_I64), 1, 0},
                                    {"out", FLOAT_DTYPES, 2, 1}};
  mq_view v[5];
  if (view_args(o, specs, v, 5) < 0 || table_args(v) < 0) return NULL;
  const int64_t dim = v[0].shape[1], n = v[3].numel;
  if (expect_out(&v[4], n, dim) < 0) return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_embedding_int8_gather(v[0].data, v[0].dtype, v[1].data, v[2].data, v[0].shape[0], dim, v[3].data, n,
                                v[4].data, v[4].dtype, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return kernel_error(st, "embedding");
  Py_RETURN_NONE;
}

/* embedding_int8_bag(q, scale, zero_point, idx, offsets, per_sample_weights|None, mode,
 *                    padding_idx, out, threads) */
PyObject *py_embedding_int8_bag(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *o[7];
  int mode, threads;
  long long padding_idx;
  if (!PyArg_ParseTuple(args, "OOOOOOiLOi:embedding_int8_bag", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5],
                        &mode, &padding_idx, &o[6], &threads))
    return NULL;
  const int has_weights = o[5] != Py_None;
  static const arg_spec specs[7] = {{"q", INT8_DTYPES, 2, 0},
                                    {"scale", DT(MQ_F32), 1, 0},
                                    {"zero_point", DT(MQ_I32), 1, 0},
                                    {"idx", DT(MQ_I64), 1, 0},
                                    {"offsets", DT(MQ_I64), 1, 0},
                                    {"per_sample_weights", DT(MQ_F32), 1, 0},
                                    {"out", FLOAT_DTYPES, 2, 1}};
  mq_view v[7];
  for (int i = 0; i < 7; i++)
    if ((i != 5 || has_weights) && view_arg(o[i], &specs[i], &v[i]) < 0) return NULL;
  if (table_args(v) < 0) return NULL;
  const int64_t rows = v[0].shape[0], dim = v[0].shape[1], n = v[3].numel, bags = v[4].numel - 1;
  if (bags < 0) {
    PyErr_SetString(PyExc_ValueError, "argument 'offsets' must hold bags + 1 values (the last one ends the last bag)");
    return NULL;
  }
  if (has_weights && expect_len(&v[5], "per_sample_weights", n) < 0) return NULL;
  if (mode < MQ_EMBEDDING_SUM || mode > MQ_EMBEDDING_MAX) {
    PyErr_Format(PyExc_ValueError, "mode must be 0 (sum), 1 (mean) or 2 (max); got %d", mode);
    return NULL;
  }
  if (has_weights && mode != MQ_EMBEDDING_SUM) {
    PyErr_SetString(PyExc_ValueError, "per_sample_weights are only supported with mode='sum' (as in torch)");
    return NULL;
  }
  if (padding_idx < -1 || padding_idx >= rows) {
    PyErr_Format(PyExc_ValueError, "padding_idx must be -1 (none) or in [0, %lld); got %lld", (long long)rows,
                 padding_idx);
    return NULL;
  }
  const int64_t *off = v[4].data;
  int ordered = off[0] >= 0 && off[bags] <= n;
  for (int64_t b = 0; ordered && b < bags; b++) ordered = off[b] <= off[b + 1];
  if (!ordered) {
    PyErr_Format(PyExc_ValueError, "offsets must be non-decreasing and within [0, %lld] (the number of indices)",
                 (long long)n);
    return NULL;
  }
  if (expect_out(&v[6], bags, dim) < 0) return NULL;
  mq_status st;
  Py_BEGIN_ALLOW_THREADS
  st = mq_embedding_int8_bag(v[0].data, v[0].dtype, v[1].data, v[2].data, rows, dim, v[3].data, n, off, bags,
                             has_weights ? v[5].data : NULL, (mq_embedding_mode)mode, (int64_t)padding_idx,
                             v[6].data, v[6].dtype, threads);
  Py_END_ALLOW_THREADS
  if (st != MQ_OK) return kernel_error(st, "embedding_bag");
  Py_RETURN_NONE;
}

/* ---- which loops run ------------------------------------------------------------------------ */

static const char *const embedding_isa_names[] = {"portable", "avx2", "avx512"};

PyObject *py_embedding_isas(PyObject *self, PyObject *args) {
  (void)self;
  (void)args;
  return supported_names(embedding_isa_names, sizeof embedding_isa_names / sizeof embedding_isa_names[0],
                         mq_embedding_isa_supported);
}

PyObject *py_set_embedding_isa(PyObject *self, PyObject *args) {
  (void)self;
  const char *name;
  if (!PyArg_ParseTuple(args, "s:set_embedding_isa", &name)) return NULL;
  const char *before = mq_embedding_isa_name();
  if (mq_embedding_set_isa(name) != MQ_OK) {
    PyErr_Format(PyExc_ValueError, "embedding kernel '%s' cannot run here; pick one of embedding_isas() or 'auto'",
                 name);
    return NULL;
  }
  return PyUnicode_FromString(before);
}
