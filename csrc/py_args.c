/* py_args.c : capsule -> checked view conversion and the shared error messages (py_args.h). */
#include <stdio.h>

#include "dlpack.h"
#include "py_args.h"

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

int view_error(mq_status st, const arg_spec *spec, const mq_view_problem *p) {
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
PyObject *kernel_error(mq_status st, const char *what) {
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
    case MQ_ERR_INDEX:
      /* torch's own message for F.embedding / F.embedding_bag, so callers catch one error */
      PyErr_Format(PyExc_IndexError, "%s: index out of range in self (every index must be >= 0 and < "
                   "the table's num_embeddings)", what);
      break;
    case MQ_ERR_NOMEM: PyErr_NoMemory(); break;
    case MQ_ERR_DTYPE: PyErr_Format(PyExc_TypeError, "%s: unsupported dtype combination", what); break;
    case MQ_ERR_SHAPE: PyErr_Format(PyExc_ValueError, "%s: sizes out of range", what); break;
    default: PyErr_Format(PyExc_RuntimeError, "%s failed: %s", what, mq_status_name(st));
  }
  return NULL;
}

/* ---- capsules -> views ------------------------------------------------------------------ */

int view_arg(PyObject *obj, const arg_spec *spec, mq_view *out) {
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
int view_args(PyObject *const *objs, const arg_spec *specs, mq_view *views, int n) {
  for (int i = 0; i < n; i++)
    if (view_arg(objs[i], &specs[i], &views[i]) < 0) return -1;
  return 0;
}

int expect_len(const mq_view *v, const char *name, int64_t n) {
  if (v->numel != n) {
    PyErr_Format(PyExc_ValueError, "argument '%s' must hold %lld values (one per channel); got %lld",
                 name, (long long)n, (long long)v->numel);
    return -1;
  }
  return 0;
}

int expect_same_shape(const mq_view *a, const char *an, const mq_view *b, const char *bn) {
  int same = a->ndim == b->ndim;
  for (int d = 0; same && d < a->ndim; d++) same = a->shape[d] == b->shape[d];
  if (!same) {
    PyErr_Format(PyExc_ValueError, "arguments '%s' and '%s' must have the same shape", an, bn);
    return -1;
  }
  return 0;
}

PyObject *supported_names(const char *const *names, size_t count, int (*supported)(const char *)) {
  PyObject *list = PyList_New(0);
  if (list == NULL) return NULL;
  for (size_t i = 0; i < count; i++) {
    if (!supported(names[i])) continue;
    PyObject *name = PyUnicode_FromString(names[i]);
    if (name == NULL || PyList_Append(list, name) < 0) {
      Py_XDECREF(name);
      Py_DECREF(list);
      return NULL;
    }
    Py_DECREF(name);
  }
  return list;
}

int parse_int8_pack_args(PyObject *args, const char *format, mq_view v[4], int64_t *n, int64_t *k, int *threads) {
  PyObject *o[4];
  if (!PyArg_ParseTuple(args, format, &o[0], &o[1], &o[2], &o[3], threads)) return -1;
  static const arg_spec specs[4] = {{"qweight", INT8_DTYPES, 2, 0},
                                    {"scale", DT(MQ_F32), 1, 0},
                                    {"zero_point", DT(MQ_I32), 1, 0},
                                    {"out_packed", DT(MQ_U8), 1, 1}};
  if (view_args(o, specs, v, 4) < 0) return -1;
  *n = v[0].shape[0];
  *k = v[0].shape[1];
  if (expect_len(&v[1], "scale", *n) < 0 || expect_len(&v[2], "zero_point", *n) < 0) return -1;
  return 0;
}
