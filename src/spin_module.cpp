/* whygpu._spin: the two clocks that OpenMP's and OpenBLAS's idle threads count in.
 *
 * After a parallel call both runtimes keep their worker threads spinning, so
 * that the next call finds them awake: libgomp for GOMP_SPINCOUNT steps of a
 * busy-wait loop (one `pause` each on x86), OpenBLAS for
 * 2^OPENBLAS_THREAD_TIMEOUT cycles of the time-stamp counter.  By default
 * that is milliseconds (libgomp) to a tenth of a second (OpenBLAS) of a core
 * held after every call -- the core the other library's threads need when a
 * notebook alternates them.  A `pause` lasts from a few to ~150 cycles
 * depending on the CPU, so whygpu measures both here and asks each runtime
 * for a spin given in microseconds (python/whygpu/_idle_threads.py).
 *
 * This module must not link OpenMP: it runs before libgomp is loaded, since
 * libgomp reads its environment once, when it is loaded.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if defined(_MSC_VER)
#include <intrin.h>
#if defined(_M_X64) || defined(_M_IX86)
#define WHYGPU_RELAX() _mm_pause()
#define WHYGPU_TICKS() __rdtsc()
#else
#define WHYGPU_RELAX() __yield()
#define WHYGPU_TICKS() 0ULL
#endif
#elif defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define WHYGPU_RELAX() _mm_pause() /* what libgomp's cpu_relax() is on x86 */
#define WHYGPU_TICKS() __rdtsc()   /* what OpenBLAS's rpcc() reads on x86 */
#else
#define WHYGPU_RELAX() __asm__ __volatile__("" ::: "memory")
#define WHYGPU_TICKS() 0ULL /* no portable cycle counter: OpenBLAS's timeout is left alone */
#endif

/* Nobody ever writes it: the loop reads it each step, as libgomp's loop reads the flag it waits on. */
static volatile int whygpu_flag = 0;

/* spin(steps) -> time-stamp counter ticks elapsed (0 where there is none). */
static PyObject* spin(PyObject* self, PyObject* arg) {
    (void)self;
    long long steps = PyLong_AsLongLong(arg);
    if (steps == -1 && PyErr_Occurred()) return NULL;
    if (steps < 0) {
        PyErr_SetString(PyExc_ValueError, "steps must be >= 0");
        return NULL;
    }
    unsigned long long t0, t1;
    Py_BEGIN_ALLOW_THREADS
    t0 = WHYGPU_TICKS();
    for (long long i = 0; i < steps; ++i) {
        if (whygpu_flag) break;
        WHYGPU_RELAX();
    }
    t1 = WHYGPU_TICKS();
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLongLong(t1 - t0);
}

static PyMethodDef methods[] = {
    {"spin", spin, METH_O, "spin(steps) -> TSC ticks: run `steps` busy-wait steps (pause), as libgomp's idle threads do."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_spin", NULL, -1, methods};

PyMODINIT_FUNC PyInit__spin(void) { return PyModule_Create(&module); }
