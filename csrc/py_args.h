/*
 * py_args.h : private to the CPython layer (module.c and the py_*.c files, the only files that
 * include Python.h).  Argument specs, capsule -> checked mq_view conversion, the shape checks
 * every entry point shares, and the exceptions that name the argument and say what to do.
 * Capsules are borrowed for the call, never consumed: their owner (the Python caller) keeps
 * the tensor alive.
 */
#ifndef MQ_PY_ARGS_H
#define MQ_PY_ARGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

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

/* Raise the exception for a view that mq_view_from_dlpack refused (or a spec mismatch). */
int view_error(mq_status st, const arg_spec *spec, const mq_view_problem *p);
/* Raise the exception for a kernel's failure; `what` names the operation.  Returns NULL. */
PyObject *kernel_error(mq_status st, const char *what);
/* A capsule -> a checked view: dtype in spec->dtypes, rank spec->ndim, writable if output. */
int view_arg(PyObject *obj, const arg_spec *spec, mq_view *out);
/* Parse `n` capsules against their specs. */
int view_args(PyObject *const *objs, const arg_spec *specs, mq_view *views, int n);
/* v holds n values (one per channel), else ValueError naming `name`. */
int expect_len(const mq_view *v, const char *name, int64_t n);
int expect_same_shape(const mq_view *a, const char *an, const mq_view *b, const char *bn);
/* The arguments of an INT8 Linear packer, (qweight[n, k] int8/uint8, scale[n] float32,
 * zero_point[n] int32, out_packed uint8, threads), parsed with PyArg_ParseTuple `format`
 * into v[4], n, k and threads (the dynamic and static packers take the same). */
int parse_int8_pack_args(PyObject *args, const char *format, mq_view v[4], int64_t *n, int64_t *k, int *threads);
/* A new list of the `count` names for which supported(name) is true (the ISA queries). */
PyObject *supported_names(const char *const *names, size_t count, int (*supported)(const char *));

#endif /* MQ_PY_ARGS_H */
