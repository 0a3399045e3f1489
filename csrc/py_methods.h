/*
 * py_methods.h : the C functions behind mono_quant._C's methods, one file per kernel family
 * (py_quant.c, py_metrics.c, py_linear.c, ...); module.c lists them in its method table.
 */
#ifndef MQ_PY_METHODS_H
#define MQ_PY_METHODS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

PyObject *py_qparams(PyObject *self, PyObject *args);
PyObject *py_quantize(PyObject *self, PyObject *args);
PyObject *py_dequantize(PyObject *self, PyObject *args);
PyObject *py_int4_quantize(PyObject *self, PyObject *args);
PyObject *py_int4_dequantize(PyObject *self, PyObject *args);
PyObject *py_int4_pack(PyObject *self, PyObject *args);
PyObject *py_int4_unpack(PyObject *self, PyObject *args);
PyObject *py_minmax(PyObject *self, PyObject *args);
PyObject *py_sqnr(PyObject *self, PyObject *args);
PyObject *py_histogram(PyObject *self, PyObject *args);
PyObject *py_cpu_features(PyObject *self, PyObject *args);
PyObject *py_linear_static(PyObject *self, PyObject *args);
PyObject *py_linear_static_packed_size(PyObject *self, PyObject *args);
PyObject *py_linear_static_pack(PyObject *self, PyObject *args);
PyObject *py_linear_static_packed(PyObject *self, PyObject *args);
PyObject *py_linear_static_isa(PyObject *self, PyObject *args);
PyObject *py_linear_int8_packed_size(PyObject *self, PyObject *args);
PyObject *py_linear_int4_packed_size(PyObject *self, PyObject *args);
PyObject *py_linear_int8_pack(PyObject *self, PyObject *args);
PyObject *py_linear_int4_pack(PyObject *self, PyObject *args);
PyObject *py_linear_int8(PyObject *self, PyObject *args);
PyObject *py_linear_int4(PyObject *self, PyObject *args);
PyObject *py_linear_isas(PyObject *self, PyObject *args);
PyObject *py_set_linear_isa(PyObject *self, PyObject *args);
PyObject *py_linear_isa_supported(PyObject *self, PyObject *args);
PyObject *py_set_linear_gemm_min_batch(PyObject *self, PyObject *args);
PyObject *py_gptq_hessian_add(PyObject *self, PyObject *args);
PyObject *py_gptq_int4(PyObject *self, PyObject *args);
PyObject *py_gptq_isas(PyObject *self, PyObject *args);
PyObject *py_set_gptq_isa(PyObject *self, PyObject *args);
PyObject *py_threadpool_stats(PyObject *self, PyObject *args);
PyObject *py_threadpool_set_backoff(PyObject *self, PyObject *args);
PyObject *py_threadpool_backoff_step(PyObject *self, PyObject *args);
PyObject *py_threadpool_back_off_for(PyObject *self, PyObject *args);
PyObject *py_embedding_int8_gather(PyObject *self, PyObject *args);
PyObject *py_embedding_int8_bag(PyObject *self, PyObject *args);
PyObject *py_embedding_isas(PyObject *self, PyObject *args);
PyObject *py_set_embedding_isa(PyObject *self, PyObject *args);

#endif /* MQ_PY_METHODS_H */
