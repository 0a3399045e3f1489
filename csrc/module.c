/*
 * module.c : the CPython module mono_quant._C: its method table and its initialisation.
 *
 * The CPython layer is split by kernel family (py_quant.c, py_metrics.c, py_linear.c, ...; the
 * argument-view helpers in py_args.h): each function parses its arguments, turns every DLPack
 * capsule into a checked mq_view (dtype, device, rank, layout), checks shapes against each
 * other, releases the GIL, calls the kernel, and turns a failure into one Python exception
 * whose message names the argument and says what to do.  Only module.c and the py_*.c files
 * include Python.h.  Built for the stable ABI (abi3, Python >= 3.10).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "dlpack.h"
#include "py_methods.h"

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
    /* static quantization */
    {"histogram", py_histogram, METH_VARARGS,
     "histogram(x, lo, hi, out_counts[int64 bins], num_threads): counts over equal bins of [lo, hi]."},
    {"linear_static", py_linear_static, METH_VARARGS,
     "linear_static(x_q[M,K], x_scale, x_zero_point, w_q[N,K], w_scale[N], w_zero_point[N], "
     "bias[N] or None, out[M,N], num_threads): integer x integer linear, float out."},
    {"linear_static_packed_size", py_linear_static_packed_size, METH_VARARGS,
     "linear_static_packed_size(n, k) -> int: bytes of a packed static INT8 [n, k] weight."},
    {"linear_static_pack", py_linear_static_pack, METH_VARARGS,
     "linear_static_pack(qweight[n,k], scale[n], zero_point[n], out_packed, num_threads)."},
    {"linear_static_packed", py_linear_static_packed, METH_VARARGS,
     "linear_static_packed(x[m,k], x_scale, x_zero_point, x_symmetric, packed, n, k, bias|None, "
     "out[m,n], num_threads): static INT8 Linear on a packed weight, float in and out."},
    {"linear_static_isa", py_linear_static_isa, METH_NOARGS,
     "linear_static_isa() -> str: the static Linear path in use (follows set_linear_isa)."},
    /* INT4 group-wise */
    {"int4_quantize", py_int4_quantize, METH_VARARGS,
     "int4_quantize(x[n,k], out_qweight[n,k/2], out_scale[n,k/g], out_zero_point[n,k/g], g, "
     "symmetric, method, num_threads): INT4 group-wise quantize + pack (method 0 absmax, 1 mse)."},
    {"int4_dequantize", py_int4_dequantize, METH_VARARGS,
     "int4_dequantize(qweight[n,k/2], scale[n,k/g], zero_point[n,k/g], out[n,k], g, num_threads)."},
    {"int4_pack", py_int4_pack, METH_VARARGS,
     "int4_pack(nibbles[n,k], out_qweight[n,k/2], num_threads): two nibbles per byte, even k low."},
    {"int4_unpack", py_int4_unpack, METH_VARARGS,
     "int4_unpack(qweight[n,k/2], out_nibbles[n,k], num_threads): the inverse of int4_pack."},
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
    {"threadpool_stats", py_threadpool_stats, METH_NOARGS,
     "threadpool_stats() -> dict: parallel jobs, jobs run alone while backing off under load, contended jobs."},
    {"threadpool_set_backoff", py_threadpool_set_backoff, METH_VARARGS,
     "threadpool_set_backoff(enabled) -> bool: back off under load (default on); returns the previous."},
    {"threadpool_backoff_step", py_threadpool_backoff_step, METH_VARARGS,
     "threadpool_backoff_step(until, backoff, start, began, done, end, idle) -> (until, backoff, contended)."},
    {"threadpool_back_off_for", py_threadpool_back_off_for, METH_VARARGS,
     "threadpool_back_off_for(seconds): test hook, run jobs on the calling thread alone for that long."},
    {"linear_isa_supported", py_linear_isa_supported, METH_VARARGS,
     "linear_isa_supported(name) -> bool: whether Linear path `name` (also 'amx_emulated') can run here."},
    {"set_linear_gemm_min_batch", py_set_linear_gemm_min_batch, METH_VARARGS,
     "set_linear_gemm_min_batch(m) -> int: test hook, batches of >= m rows run the batch kernel "
     "(0 = each path's own threshold); returns the previous."},
    /* GPTQ */
    {"gptq_hessian_add", py_gptq_hessian_add, METH_VARARGS,
     "gptq_hessian_add(x[rows,k], mask[rows] uint8 or None, h[k,k] float64, num_threads) -> int: "
     "h += x^T x over the unmasked rows (upper triangle only); returns the rows counted."},
    {"gptq_int4", py_gptq_int4, METH_VARARGS,
     "gptq_int4(w[n,k] float32, v[k,k], perm[k] int64 or None, scale[n,k/g] fp16, "
     "zero_point[n,k/g], g, block_size, out_qweight[n,k/2], num_threads): the GPTQ column loop."},
    {"gptq_isas", py_gptq_isas, METH_NOARGS,
     "gptq_isas() -> list: the GPTQ inner-loop tables this CPU can run, best last."},
    {"set_gptq_isa", py_set_gptq_isa, METH_VARARGS,
     "set_gptq_isa(name) -> str: test hook, force a GPTQ table ('auto' = best); returns the previous."},
    /* EMBEDDING */
    {"embedding_int8_gather", py_embedding_int8_gather, METH_VARARGS,
     "embedding_int8_gather(q[rows,dim], scale[rows], zero_point[rows], idx[n] int64, out[n,dim], "
     "num_threads): the rows idx of a per-row INT8 table, dequantized."},
    {"embedding_int8_bag", py_embedding_int8_bag, METH_VARARGS,
     "embedding_int8_bag(q[rows,dim], scale[rows], zero_point[rows], idx[n] int64, offsets[bags+1] "
     "int64, per_sample_weights[n] float32 or None, mode (0 sum, 1 mean, 2 max), padding_idx (-1: "
     "none), out[bags,dim], num_threads): bags of rows reduced."},
    {"embedding_isas", py_embedding_isas, METH_NOARGS,
     "embedding_isas() -> list: the embedding loops this CPU can run, best last."},
    {"set_embedding_isa", py_set_embedding_isa, METH_VARARGS,
     "set_embedding_isa(name) -> str: test hook, force embedding loops ('auto' = best); returns the previous."},
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
