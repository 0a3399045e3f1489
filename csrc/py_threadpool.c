/* py_threadpool.c : entry points that inspect and steer the thread pool (threadpool.c):
 * its counters, the switch for backing off under load, and the back-off rule itself so the
 * tests can check it without a loaded machine. */
#include "py_methods.h"
#include "threadpool.h"

PyObject *py_threadpool_stats(PyObject *self, PyObject *args) {
  (void)self;
  (void)args;
  const mq_threadpool_stats st = mq_threadpool_get_stats();
  return Py_BuildValue("{s:L,s:L,s:L,s:O}", "parallel_jobs", (long long)st.parallel_jobs,
                       "serial_under_load", (long long)st.serial_under_load, "contended_jobs",
                       (long long)st.contended_jobs, "backoff",
                       mq_threadpool_backoff_enabled() ? Py_True : Py_False);
}

PyObject *py_threadpool_set_backoff(PyObject *self, PyObject *args) {
  (void)self;
  int enabled;
  if (!PyArg_ParseTuple(args, "p:threadpool_set_backoff", &enabled)) return NULL;
  const int before = mq_threadpool_backoff_enabled();
  mq_threadpool_set_backoff(enabled);
  return PyBool_FromLong(before);
}

/* threadpool_backoff_step(serial_until, backoff, start, began, done, end, idle)
 *   -> (serial_until, backoff, contended) */
PyObject *py_threadpool_backoff_step(PyObject *self, PyObject *args) {
  (void)self;
  long long until, backoff, start, began, done, end, idle;
  if (!PyArg_ParseTuple(args, "LLLLLLL:threadpool_backoff_step", &until, &backoff, &start, &began,
                        &done, &end, &idle))
    return NULL;
  mq_backoff st = {until, backoff, 0};
  st = mq_backoff_step(st, start, began, done, end, idle);
  return Py_BuildValue("(LLO)", (long long)st.serial_until_ns, (long long)st.backoff_ns,
                       st.contended ? Py_True : Py_False);
}

/* threadpool_back_off_for(seconds): test hook, run jobs on the caller alone for that long. */
PyObject *py_threadpool_back_off_for(PyObject *self, PyObject *args) {
  (void)self;
  double seconds;
  if (!PyArg_ParseTuple(args, "d:threadpool_back_off_for", &seconds)) return NULL;
  if (!(seconds >= 0.0 && seconds <= 3600.0)) {
    PyErr_SetString(PyExc_ValueError, "threadpool_back_off_for: seconds must be in 0..3600");
    return NULL;
  }
  mq_threadpool_back_off_for((int64_t)(seconds * 1e9));
  Py_RETURN_NONE;
}
