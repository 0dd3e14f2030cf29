/* bncore._cpu: the two per-element loops of BatchNorm on the CPU, in C, and the per-channel
 * arithmetic around them.
 *
 * Arrays travel through the buffer protocol (no NumPy headers at build time). The input is
 * viewed as (a, c, b): the channel axis in the middle (see bncore.moments.channels_view).
 * The loops release the GIL (the whole-step entries only for arrays big enough to gain from
 * it). Float32 and float64 inputs; sums always accumulate in double. The entries that do a
 * fit's (C,) arithmetic (stats, normalize, fit_step, update, drift, drift_summary) exist
 * because on small batches some thirty NumPy calls on (C,) vectors cost more than the loops.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Arrays this big release the GIL while they compute; smaller ones keep it: a release and
 * reacquire costs more than it frees, and while another thread runs Python (the store's
 * writer) each release hands it the GIL, so the caller then waits for its turn back. */
#define RELEASE_GIL_ELEMS 65536
#define GIL_RELEASE(elems) \
    PyThreadState *gil_state_ = (elems) >= RELEASE_GIL_ELEMS ? PyEval_SaveThread() : NULL
#define GIL_ACQUIRE() \
    if (gil_state_ != NULL) PyEval_RestoreThread(gil_state_)

typedef struct {
    Py_buffer view;
    int is_double;
} Input;

static int get_input(PyObject *obj, Input *in, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &in->view, flags) < 0) return -1;
    const char *f = in->view.format ? in->view.format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@') f++;
    if (strcmp(f, "f") == 0 && in->view.itemsize == 4) in->is_double = 0;
    else if (strcmp(f, "d") == 0 && in->view.itemsize == 8) in->is_double = 1;
    else {
        PyBuffer_Release(&in->view);
        PyErr_Format(PyExc_TypeError, "expected a float32 or float64 buffer, got format %s", f);
        return -1;
    }
    return 0;
}

static int get_doubles(PyObject *obj, Py_buffer *view, Py_ssize_t n, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    const char *f = view->format ? view->format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@') f++;
    if (strcmp(f, "d") != 0 || view->len != n * (Py_ssize_t)sizeof(double)) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "expected %zd float64 values", n);
        return -1;
    }
    return 0;
}

/* Arguments of the METH_FASTCALL entry points (no format string to interpret per call). */
static int ssize_arg(PyObject *o, Py_ssize_t *v) {
    *v = PyLong_AsSsize_t(o);
    return *v == -1 && PyErr_Occurred() ? -1 : 0;
}

static int double_arg(PyObject *o, double *v) {
    *v = PyFloat_AsDouble(o);
    return *v == -1.0 && PyErr_Occurred() ? -1 : 0;
}

static int check_shape(Input *in, Py_ssize_t a, Py_ssize_t c, Py_ssize_t b, Py_ssize_t row0,
                       Py_ssize_t row1) {
    if (a < 0 || c < 1 || b < 1 || in->view.len != a * c * b * in->view.itemsize) {
        PyErr_SetString(PyExc_ValueError, "buffer size does not match (a, c, b)");
        return -1;
    }
    if (row0 < 0 || row1 < row0 || row1 > a) {
        PyErr_SetString(PyExc_ValueError, "row range outside the array");
        return -1;
    }
    return 0;
}

/* Each loop is compiled twice, for x86-64-v3 (AVX2 + FMA) and for the baseline, and picked at
 * load time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KERNEL __attribute__((target_clones("arch=x86-64-v3", "default")))
/* The affine loops also get an AVX-512 clone: each output is one element's own arithmetic,
 * so the vector width cannot change a bit. (Not the moments: -fassociative-math lets each
 * clone order their sums its own way, and an AVX-512 one gives other last bits.) */
#define KERNEL_WIDE __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KERNEL
#define KERNEL_WIDE
#endif

/* One read of memory: each cache-sized piece (a block of rows, or one (row, channel) plane)
 * gets an exact two-pass mean and M2 while it is in cache, and pieces are folded into the
 * per-channel totals with Chan's pairwise update (never E[x^2] - E[x]^2). */
#define BLOCK_ELEMS 65536

static inline void chan_merge(double *mean, double *m2, double n, double bmean, double bm2,
                              double nb) {
    const double tot = n + nb, delta = bmean - *mean;
    *mean += delta * (nb / tot);
    *m2 += bm2 + delta * delta * (n * nb / tot);
}

#define MOMENTS_LOOP(T)                                                                     \
    do {                                                                                    \
        double seen = 0.0;                                                                  \
        if (b == 1) {                                                                       \
            Py_ssize_t rows = BLOCK_ELEMS / c;                                              \
            if (rows < 1) rows = 1;                                                         \
            for (Py_ssize_t r = row0; r < row1; r += rows) {                                \
                const Py_ssize_t end = r + rows < row1 ? r + rows : row1;                   \
                const double nb = (double)(end - r);                                        \
                for (Py_ssize_t j = 0; j < c; j++) bmean[j] = 0.0, bm2[j] = 0.0;           \
                /* four rows per sweep: a quarter of the accumulators' loads and stores */ \
                Py_ssize_t i = r;                                                           \
                for (; i + 4 <= end; i += 4) {                                              \
                    const T *r0 = x + i * c, *r1 = r0 + c, *r2 = r1 + c, *r3 = r2 + c;      \
                    for (Py_ssize_t j = 0; j < c; j++)                                      \
                        bmean[j] += ((double)r0[j] + (double)r1[j]) +                       \
                                    ((double)r2[j] + (double)r3[j]);                        \
                }                                                                           \
                for (; i < end; i++) {                                                      \
                    const T *row = x + i * c;                                               \
                    for (Py_ssize_t j = 0; j < c; j++) bmean[j] += (double)row[j];         \
                }                                                                           \
                for (Py_ssize_t j = 0; j < c; j++) bmean[j] /= nb;                         \
                for (i = r; i + 4 <= end; i += 4) {                                         \
                    const T *r0 = x + i * c, *r1 = r0 + c, *r2 = r1 + c, *r3 = r2 + c;      \
                    for (Py_ssize_t j = 0; j < c; j++) {                                    \
                        const double m = bmean[j];                                          \
                        const double d0 = (double)r0[j] - m, d1 = (double)r1[j] - m;        \
                        const double d2 = (double)r2[j] - m, d3 = (double)r3[j] - m;        \
                        bm2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);                \
                    }                                                                       \
                }                                                                           \
                for (; i < end; i++) {                                                      \
                    const T *row = x + i * c;                                               \
                    for (Py_ssize_t j = 0; j < c; j++) {                                    \
                        const double d = (double)row[j] - bmean[j];                         \
                        bm2[j] += d * d;                                                    \
                    }                                                                       \
                }                                                                           \
                for (Py_ssize_t j = 0; j < c; j++)                                          \
                    chan_merge(mean + j, m2 + j, seen, bmean[j], bm2[j], nb);               \
                seen += nb;                                                                 \
            }                                                                               \
        } else {                                                                            \
            const double nb = (double)b;                                                    \
            for (Py_ssize_t i = row0; i < row1; i++) {                                      \
                for (Py_ssize_t j = 0; j < c; j++) {                                        \
                    const T *p = x + (i * c + j) * b;                                       \
                    double s = 0.0, q = 0.0;                                                \
                    for (Py_ssize_t k = 0; k < b; k++) s += (double)p[k];                  \
                    const double mu = s / nb;                                               \
                    for (Py_ssize_t k = 0; k < b; k++) {                                    \
                        const double d = (double)p[k] - mu;                                 \
                        q += d * d;                                                         \
                    }                                                                       \
                    chan_merge(mean + j, m2 + j, seen, mu, q, nb);                          \
                }                                                                           \
                seen += nb;                                                                 \
            }                                                                               \
        }                                                                                   \
    } while (0)

KERNEL static void moments_f32(const float *restrict x, Py_ssize_t c, Py_ssize_t b,
                               Py_ssize_t row0, Py_ssize_t row1, double *restrict mean,
                               double *restrict m2, double *restrict bmean, double *restrict bm2) {
    MOMENTS_LOOP(float);
}

KERNEL static void moments_f64(const double *restrict x, Py_ssize_t c, Py_ssize_t b,
                               Py_ssize_t row0, Py_ssize_t row1, double *restrict mean,
                               double *restrict m2, double *restrict bmean, double *restrict bm2) {
    MOMENTS_LOOP(double);
}

static PyObject *moments(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *mo, *so;
    Py_ssize_t a, c, b, row0, row1;
    if (!PyArg_ParseTuple(args, "OnnnnnOO", &xo, &a, &c, &b, &row0, &row1, &mo, &so)) return NULL;
    Input in;
    Py_buffer mv, sv;
    if (get_input(xo, &in, 0) < 0) return NULL;
    if (check_shape(&in, a, c, b, row0, row1) < 0) goto fail_in;
    if (get_doubles(mo, &mv, c, 1) < 0) goto fail_in;
    if (get_doubles(so, &sv, c, 1) < 0) goto fail_mv;
    double *mean = (double *)mv.buf, *m2 = (double *)sv.buf;
    memset(mean, 0, c * sizeof(double));
    memset(m2, 0, c * sizeof(double));
    double *scratch = PyMem_RawMalloc(2 * c * sizeof(double));  /* one block's mean and M2 */
    if (scratch == NULL) {
        PyErr_NoMemory();
        goto fail_sv;
    }
    GIL_RELEASE((row1 - row0) * c * b);
    if (in.is_double) moments_f64(in.view.buf, c, b, row0, row1, mean, m2, scratch, scratch + c);
    else moments_f32(in.view.buf, c, b, row0, row1, mean, m2, scratch, scratch + c);
    GIL_ACQUIRE();
    PyMem_RawFree(scratch);
    int finite = 1; /* M2 is NaN or Inf exactly when a value of its channel is */
    for (Py_ssize_t j = 0; j < c; j++) finite &= isfinite(m2[j]) != 0;
    PyBuffer_Release(&sv);
    PyBuffer_Release(&mv);
    PyBuffer_Release(&in.view);
    return PyBool_FromLong(finite);
fail_sv:
    PyBuffer_Release(&sv);
fail_mv:
    PyBuffer_Release(&mv);
fail_in:
    PyBuffer_Release(&in.view);
    return NULL;
}

/* y = (x - center[j]) * scale[j] + offset[j], each element computed in double and rounded
 * once to the input's precision: float32 outputs at float64 quality. (x * scale + shift in
 * float32, with shift ~ -mean * scale, cancels two large terms: 0.07 absolute error at mean
 * 1e6.) The returned flag says whether every output is finite (their running sum in T is,
 * unless an output is NaN or Inf, or the sum overflows: the caller then looks closer). */
#define AFFINE_LOOP(T)                                                                      \
    do {                                                                                    \
        T total = 0;                                                                        \
        Py_ssize_t i = row0;                                                                \
        if (b == 1) /* four rows per sweep: the channel vectors are loaded once for four */ \
            for (; i + 4 <= row1; i += 4) {                                                 \
                const T *x0 = x + i * c;                                                    \
                T *y0 = y + i * c;                                                          \
                for (Py_ssize_t j = 0; j < c; j++) {                                        \
                    const double m = center[j], s = scale[j], t = offset[j];                \
                    const T v0 = (T)(((double)x0[j] - m) * s + t);                          \
                    const T v1 = (T)(((double)x0[j + c] - m) * s + t);                      \
                    const T v2 = (T)(((double)x0[j + 2 * c] - m) * s + t);                  \
                    const T v3 = (T)(((double)x0[j + 3 * c] - m) * s + t);                  \
                    y0[j] = v0, y0[j + c] = v1, y0[j + 2 * c] = v2, y0[j + 3 * c] = v3;     \
                    total += (v0 + v1) + (v2 + v3);                                         \
                }                                                                           \
            }                                                                               \
        for (; i < row1; i++) {                                                             \
            const Py_ssize_t base = i * c * b;                                              \
            if (b == 1) {                                                                   \
                for (Py_ssize_t j = 0; j < c; j++) {                                        \
                    const T v = (T)(((double)x[base + j] - center[j]) * scale[j] + offset[j]); \
                    y[base + j] = v;                                                        \
                    total += v;                                                             \
                }                                                                           \
            } else {                                                                        \
                for (Py_ssize_t j = 0; j < c; j++) {                                        \
                    const double m = center[j], s = scale[j], t = offset[j];                \
                    const T *p = x + base + j * b;                                          \
                    T *q = y + base + j * b;                                                \
                    T part = 0;                                                             \
                    for (Py_ssize_t k = 0; k < b; k++) {                                    \
                        const T v = (T)(((double)p[k] - m) * s + t);                        \
                        q[k] = v;                                                           \
                        part += v;                                                          \
                    }                                                                       \
                    total += part;                                                          \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        return isfinite(total);                                                             \
    } while (0)

KERNEL_WIDE static int affine_f32(const float *restrict x, float *restrict y, Py_ssize_t c, Py_ssize_t b,
                             Py_ssize_t row0, Py_ssize_t row1, const double *center,
                             const double *scale, const double *offset) {
    AFFINE_LOOP(float);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define HAVE_STREAM 1
/* Planes of float32 (channel axis 1 with spatial size b): streaming stores write y without
 * first reading its cache lines, a third less memory traffic on a memory-bound loop. Each
 * 8-float vector is widened to two 4-double vectors, (x - m) * s + t by a double FMA, and
 * narrowed once: the same bits as the scalar loop, at the same memory-bound speed. */
__attribute__((target("avx2,fma"))) static int affine_planes_f32_stream(
    const float *x, float *y, Py_ssize_t c, Py_ssize_t b, Py_ssize_t row0, Py_ssize_t row1,
    const double *center, const double *scale, const double *offset) {
    __m256 acc = _mm256_setzero_ps();
    double tail = 0.0;
    for (Py_ssize_t i = row0; i < row1; i++) {
        for (Py_ssize_t j = 0; j < c; j++) {
            const double m = center[j], s = scale[j], t = offset[j];
            const float *p = x + (i * c + j) * b;
            float *q = y + (i * c + j) * b;
            Py_ssize_t k = 0;
            for (; k < b && ((uintptr_t)(q + k) & 31u) != 0; k++) {
                const float v = (float)(((double)p[k] - m) * s + t);
                q[k] = v;
                tail += v;
            }
            const __m256d vm = _mm256_set1_pd(m), vs = _mm256_set1_pd(s), vt = _mm256_set1_pd(t);
            for (; k + 8 <= b; k += 8) {
                const __m256 v = _mm256_loadu_ps(p + k);
                const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
                const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
                const __m128 rlo = _mm256_cvtpd_ps(_mm256_fmadd_pd(_mm256_sub_pd(lo, vm), vs, vt));
                const __m128 rhi = _mm256_cvtpd_ps(_mm256_fmadd_pd(_mm256_sub_pd(hi, vm), vs, vt));
                const __m256 r = _mm256_set_m128(rhi, rlo);
                _mm256_stream_ps(q + k, r);
                acc = _mm256_add_ps(acc, r);
            }
            for (; k < b; k++) {
                const float v = (float)(((double)p[k] - m) * s + t);
                q[k] = v;
                tail += v;
            }
        }
    }
    _mm_sfence();
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    for (int l = 0; l < 8; l++) tail += lanes[l];
    return isfinite(tail);
}
#endif

KERNEL_WIDE static int affine_f64(const double *restrict x, double *restrict y, Py_ssize_t c, Py_ssize_t b,
                             Py_ssize_t row0, Py_ssize_t row1, const double *center,
                             const double *scale, const double *offset) {
    AFFINE_LOOP(double);
}

/* y = (x - center) * scale + offset on rows [row0, row1), on one thread, in cache-sized pieces
 * from the last rows to the first: data just written or read front to back (a decoded body,
 * the moments pass) has its last rows still in cache. Each y is its own element's
 * arithmetic, so the order changes no bit (only that of the finiteness sum). */
static int affine_backwards(const Input *in, Input *out, Py_ssize_t c, Py_ssize_t b,
                            Py_ssize_t row0, Py_ssize_t row1, const double *center,
                            const double *scale, const double *offset) {
    Py_ssize_t rows = BLOCK_ELEMS / (c * b);
    if (rows < 1) rows = 1;
    int finite = 1;
#ifdef HAVE_STREAM
    const int stream = b >= 64 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    for (Py_ssize_t r1 = row1; r1 > row0; r1 -= rows) {
        const Py_ssize_t r0 = r1 - row0 > rows ? r1 - rows : row0;
        int ok;
        if (in->is_double)
            ok = affine_f64(in->view.buf, out->view.buf, c, b, r0, r1, center, scale, offset);
#ifdef HAVE_STREAM
        else if (stream)
            ok = affine_planes_f32_stream(in->view.buf, out->view.buf, c, b, r0, r1, center,
                                          scale, offset);
#endif
        else ok = affine_f32(in->view.buf, out->view.buf, c, b, r0, r1, center, scale, offset);
        finite = finite && ok;
    }
    return finite;
}

static PyObject *affine(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *mo, *so, *to, *yo;
    Py_ssize_t a, c, b, row0, row1;
    if (!PyArg_ParseTuple(args, "OnnnnnOOOO", &xo, &a, &c, &b, &row0, &row1, &mo, &so, &to, &yo))
        return NULL;
    Input in, out;
    Py_buffer mv, sv, tv;
    int finite = 1;
    if (get_input(xo, &in, 0) < 0) return NULL;
    if (check_shape(&in, a, c, b, row0, row1) < 0) goto fail_in;
    if (get_input(yo, &out, 1) < 0) goto fail_in;
    if (out.is_double != in.is_double || out.view.len != in.view.len) {
        PyErr_SetString(PyExc_ValueError, "output must match the input's dtype and size");
        goto fail_out;
    }
    if (get_doubles(mo, &mv, c, 0) < 0) goto fail_out;
    if (get_doubles(so, &sv, c, 0) < 0) goto fail_mv;
    if (get_doubles(to, &tv, c, 0) < 0) goto fail_sv;
    const double *center = mv.buf, *scale = sv.buf, *offset = tv.buf;
    GIL_RELEASE((row1 - row0) * c * b);
    finite = affine_backwards(&in, &out, c, b, row0, row1, center, scale, offset);
    GIL_ACQUIRE();
    PyBuffer_Release(&tv);
    PyBuffer_Release(&sv);
    PyBuffer_Release(&mv);
    PyBuffer_Release(&out.view);
    PyBuffer_Release(&in.view);
    return PyBool_FromLong(finite);
fail_sv:
    PyBuffer_Release(&sv);
fail_mv:
    PyBuffer_Release(&mv);
fail_out:
    PyBuffer_Release(&out.view);
fail_in:
    PyBuffer_Release(&in.view);
    return NULL;
}

/* The same two loops split by rows over nthreads OpenMP threads, for big arrays. OpenMP's
 * workers wait spinning for a moment after each region, so a fork costs microseconds where a
 * Python thread pool's hand-off costs tens (and a woken thread may wait for a busy core). The
 * row ranges' moments are merged in order with Chan's update. */
#ifdef _OPENMP
#include <omp.h>
#endif

static Py_ssize_t row_bound(Py_ssize_t a, int t, int nt) { return (Py_ssize_t)((a * (long long)t) / nt); }

/* Moments of all rows of x on nt threads (1: no fork); out of memory: -1. Runs without the
 * GIL (the raw allocator is thread-safe). */
static int moments_rows(const Input *in, Py_ssize_t a, Py_ssize_t c, Py_ssize_t b, int nt,
                        double *mean, double *m2) {
    if (nt > a) nt = a > 0 ? (int)a : 1;
    if (nt < 1) nt = 1;
    memset(mean, 0, c * sizeof(double));
    memset(m2, 0, c * sizeof(double));
    if (nt == 1) {
        double *scratch = PyMem_RawMalloc(2 * c * sizeof(double)); /* one block's mean, M2 */
        if (scratch == NULL) return -1;
        if (in->is_double) moments_f64(in->view.buf, c, b, 0, a, mean, m2, scratch, scratch + c);
        else moments_f32(in->view.buf, c, b, 0, a, mean, m2, scratch, scratch + c);
        PyMem_RawFree(scratch);
        return 0;
    }
    /* per thread: its rows' mean and M2, and one block's scratch */
    double *work = PyMem_RawCalloc((size_t)nt * 4 * c, sizeof(double));
    if (work == NULL) return -1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static, 1)
#endif
    for (int t = 0; t < nt; t++) {
        double *w = work + (size_t)t * 4 * c;
        const Py_ssize_t r0 = row_bound(a, t, nt), r1 = row_bound(a, t + 1, nt);
        if (in->is_double) moments_f64(in->view.buf, c, b, r0, r1, w, w + c, w + 2 * c, w + 3 * c);
        else moments_f32(in->view.buf, c, b, r0, r1, w, w + c, w + 2 * c, w + 3 * c);
    }
    double seen = 0.0;
    for (int t = 0; t < nt; t++) {
        const double *w = work + (size_t)t * 4 * c;
        const double nb = (double)((row_bound(a, t + 1, nt) - row_bound(a, t, nt)) * b);
        if (nb <= 0) continue;
        for (Py_ssize_t j = 0; j < c; j++) chan_merge(mean + j, m2 + j, seen, w[j], w[c + j], nb);
        seen += nb;
    }
    PyMem_RawFree(work);
    return 0;
}

static int all_finite(const double *v, Py_ssize_t c) {
    int finite = 1; /* M2 is NaN or Inf exactly when a value of its channel is */
    for (Py_ssize_t j = 0; j < c; j++) finite &= isfinite(v[j]) != 0;
    return finite;
}

static PyObject *moments_mt(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *mo, *so;
    Py_ssize_t a, c, b;
    int nt, rc;
    if (!PyArg_ParseTuple(args, "OnnniOO", &xo, &a, &c, &b, &nt, &mo, &so)) return NULL;
    Input in;
    Py_buffer mv, sv;
    PyObject *res = NULL;
    if (get_input(xo, &in, 0) < 0) return NULL;
    if (check_shape(&in, a, c, b, 0, a) < 0) goto fail_in;
    if (get_doubles(mo, &mv, c, 1) < 0) goto fail_in;
    if (get_doubles(so, &sv, c, 1) < 0) goto fail_mv;
    double *mean = (double *)mv.buf, *m2 = (double *)sv.buf;
    GIL_RELEASE(a * c * b);
    rc = moments_rows(&in, a, c, b, nt, mean, m2);
    GIL_ACQUIRE();
    res = rc < 0 ? PyErr_NoMemory() : PyBool_FromLong(all_finite(m2, c));
    PyBuffer_Release(&sv);
fail_mv:
    PyBuffer_Release(&mv);
fail_in:
    PyBuffer_Release(&in.view);
    return res;
}

/* stats(x, a, c, b, nthreads, out): out is one (3, c) float64 block, rows count (a * b),
 * mean and M2: a batch's moments in one call. True when every M2 is finite. */
static PyObject *stats(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *oo;
    Py_ssize_t a, c, b;
    int nt, rc;
    if (!PyArg_ParseTuple(args, "OnnniO", &xo, &a, &c, &b, &nt, &oo)) return NULL;
    Input in;
    Py_buffer ov;
    PyObject *res = NULL;
    if (get_input(xo, &in, 0) < 0) return NULL;
    if (check_shape(&in, a, c, b, 0, a) < 0) goto fail_in;
    if (get_doubles(oo, &ov, 3 * c, 1) < 0) goto fail_in;
    double *cnt = ov.buf, *mean = cnt + c, *m2 = mean + c;
    GIL_RELEASE(a * c * b);
    rc = moments_rows(&in, a, c, b, nt, mean, m2);
    GIL_ACQUIRE();
    for (Py_ssize_t j = 0; j < c; j++) cnt[j] = (double)(a * b);
    res = rc < 0 ? PyErr_NoMemory() : PyBool_FromLong(all_finite(m2, c));
    PyBuffer_Release(&ov);
fail_in:
    PyBuffer_Release(&in.view);
    return res;
}

/* y = (x - center) * scale + offset over all rows on nt threads; whether all are finite. */
static int affine_rows(const Input *in, Input *out, Py_ssize_t a, Py_ssize_t c, Py_ssize_t b,
                       int nt, const double *center, const double *scale, const double *offset) {
    if (nt > a) nt = a > 0 ? (int)a : 1;
    if (nt < 1) nt = 1;
    int finite = 1;
#ifdef HAVE_STREAM
    const int stream = b >= 64 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    if (nt == 1) /* no parallel region at all: entering one costs a small batch dearly */
        return affine_backwards(in, out, c, b, 0, a, center, scale, offset);
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static, 1) reduction(&& : finite)
#endif
    for (int t = 0; t < nt; t++) {
        const Py_ssize_t r0 = row_bound(a, t, nt), r1 = row_bound(a, t + 1, nt);
        int ok;
        if (in->is_double)
            ok = affine_f64(in->view.buf, out->view.buf, c, b, r0, r1, center, scale, offset);
#ifdef HAVE_STREAM
        else if (stream)
            ok = affine_planes_f32_stream(in->view.buf, out->view.buf, c, b, r0, r1, center, scale,
                                          offset);
#endif
        else ok = affine_f32(in->view.buf, out->view.buf, c, b, r0, r1, center, scale, offset);
        finite = finite && ok;
    }
    return finite;
}

/* x and a writable y of the same dtype and size, both viewed as (a, c, b). */
static int input_output(PyObject *xo, PyObject *yo, Input *in, Input *out, Py_ssize_t a,
                        Py_ssize_t c, Py_ssize_t b) {
    if (get_input(xo, in, 0) < 0) return -1;
    if (check_shape(in, a, c, b, 0, a) < 0) goto fail_in;
    if (get_input(yo, out, 1) < 0) goto fail_in;
    if (out->is_double == in->is_double && out->view.len == in->view.len) return 0;
    PyErr_SetString(PyExc_ValueError, "output must match the input's dtype and size");
    PyBuffer_Release(&out->view);
fail_in:
    PyBuffer_Release(&in->view);
    return -1;
}

static PyObject *affine_mt(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *mo, *so, *to, *yo;
    Py_ssize_t a, c, b;
    int nt, finite;
    if (!PyArg_ParseTuple(args, "OnnniOOOO", &xo, &a, &c, &b, &nt, &mo, &so, &to, &yo))
        return NULL;
    Input in, out;
    Py_buffer mv, sv, tv;
    PyObject *res = NULL;
    if (input_output(xo, yo, &in, &out, a, c, b) < 0) return NULL;
    if (get_doubles(mo, &mv, c, 0) < 0) goto fail_out;
    if (get_doubles(so, &sv, c, 0) < 0) goto fail_mv;
    if (get_doubles(to, &tv, c, 0) < 0) goto fail_sv;
    GIL_RELEASE(a * c * b);
    finite = affine_rows(&in, &out, a, c, b, nt, mv.buf, sv.buf, tv.buf);
    GIL_ACQUIRE();
    res = PyBool_FromLong(finite);
    PyBuffer_Release(&tv);
fail_sv:
    PyBuffer_Release(&sv);
fail_mv:
    PyBuffer_Release(&mv);
fail_out:
    PyBuffer_Release(&out.view);
    PyBuffer_Release(&in.view);
    return res;
}

/* The per-channel (C-sized) arithmetic of a train-mode step, done in one call instead of some
 * twenty NumPy calls; the same formulas, in the same order, as bncore.batchnorm (which stays
 * the reference): no reassociation here, so both give the same bits. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-associative-math", "fp-contract=off")
#endif

static int optional_input(PyObject *obj, Input *in, Py_ssize_t c) {
    if (obj == Py_None) {
        in->view.buf = NULL;
        return 0;
    }
    if (get_input(obj, in, 0) < 0) return -1;
    if (in->view.len != c * in->view.itemsize) {
        PyBuffer_Release(&in->view);
        PyErr_SetString(PyExc_ValueError, "parameter length does not match the channels");
        return -1;
    }
    return 0;
}

static inline double at(const Input *in, Py_ssize_t j) {
    return in->is_double ? ((const double *)in->view.buf)[j] : (double)((const float *)in->view.buf)[j];
}

static inline void put(Input *in, Py_ssize_t j, double v) {
    if (in->is_double) ((double *)in->view.buf)[j] = v;
    else ((float *)in->view.buf)[j] = (float)v;
}

/* scale = weight / sqrt(var + eps) (weight 1 if None), the one per-channel factor of both
 * modes; the output is then (x - mean) * scale + bias. */
static inline double bn_scale(double var, double eps, const Input *w, Py_ssize_t j) {
    double k = 1.0 / sqrt(var + eps);
    if (w->view.buf != NULL) k = k * at(w, j);
    return k;
}

static PyObject *scale_shift(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *mo, *vo, *wo, *bo, *so, *to;
    double eps;
    if (!PyArg_ParseTuple(args, "OOdOOOO", &mo, &vo, &eps, &wo, &bo, &so, &to)) return NULL;
    Py_buffer mv, vv, sv, tv;
    Input w, b;
    Py_ssize_t c;
    if (PyObject_GetBuffer(mo, &mv, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    c = mv.len / (Py_ssize_t)sizeof(double);
    PyBuffer_Release(&mv);
    if (get_doubles(mo, &mv, c, 0) < 0) return NULL;
    if (get_doubles(vo, &vv, c, 0) < 0) goto f_mv;
    if (optional_input(wo, &w, c) < 0) goto f_vv;
    if (optional_input(bo, &b, c) < 0) goto f_w;
    if (get_doubles(so, &sv, c, 1) < 0) goto f_b;
    if (get_doubles(to, &tv, c, 1) < 0) goto f_sv;
    const double *mean = mv.buf, *var = vv.buf;
    double *scale = sv.buf, *shift = tv.buf;
    for (Py_ssize_t j = 0; j < c; j++) {
        const double k = bn_scale(var[j], eps, &w, j);
        scale[j] = k;
        shift[j] = (b.view.buf != NULL ? at(&b, j) : 0.0) - mean[j] * k;
    }
    PyBuffer_Release(&tv);
    PyBuffer_Release(&sv);
    if (b.view.buf != NULL) PyBuffer_Release(&b.view);
    if (w.view.buf != NULL) PyBuffer_Release(&w.view);
    PyBuffer_Release(&vv);
    PyBuffer_Release(&mv);
    Py_RETURN_NONE;
f_sv:
    PyBuffer_Release(&sv);
f_b:
    if (b.view.buf != NULL) PyBuffer_Release(&b.view);
f_w:
    if (w.view.buf != NULL) PyBuffer_Release(&w.view);
f_vv:
    PyBuffer_Release(&vv);
f_mv:
    PyBuffer_Release(&mv);
    return NULL;
}

/* The running EMA (new = w_new * batch + old * w_old; the batch variance biased (M2 / n,
 * Keras and ONNX) or unbiased (M2 / (n - 1), PyTorch)) and Chan's merge of the batch into the
 * population, per channel. r = {rm, rv, rm_out, rv_out}; track = all four given. */
static void update_loop(Py_ssize_t c, const double *mean, const double *m2, const double *cnt,
                        double w_new, double w_old, int biased, Input *r, int track,
                        const double *pc, const double *pm, const double *pm2, double *opc,
                        double *opm, double *opm2) {
    for (Py_ssize_t j = 0; j < c; j++) {
        if (track) {
            const double v = biased ? m2[j] / cnt[j] : m2[j] / (cnt[j] - 1);
            put(&r[2], j, w_new * mean[j] + at(&r[0], j) * w_old);
            put(&r[3], j, w_new * v + at(&r[1], j) * w_old);
        }
        const double n = pc[j] + cnt[j];
        const double frac = cnt[j] / (isnan(n) || n > 1.0 ? n : 1.0); /* np.maximum */
        const double delta = mean[j] - pm[j];
        opm[j] = pm[j] + delta * frac;
        opm2[j] = pm2[j] + m2[j] + delta * delta * pc[j] * frac;
        opc[j] = n;
    }
}

static int running_inputs(PyObject **o, Input *r, int *nr, Py_ssize_t c) {
    for (; *nr < 4; (*nr)++) {
        Input *in = &r[*nr];
        if (o[*nr] == Py_None) {
            in->view.buf = NULL;
            continue;
        }
        if (get_input(o[*nr], in, *nr >= 2) < 0) return -1;
        if (in->view.len != c * in->view.itemsize) {
            PyBuffer_Release(&in->view);
            in->view.buf = NULL;
            PyErr_SetString(PyExc_ValueError, "running buffer length does not match");
            return -1;
        }
    }
    return 0;
}

static void release_running(Input *r, int nr) {
    for (int k = 0; k < nr; k++)
        if (r[k].view.buf != NULL) PyBuffer_Release(&r[k].view);
}

/* A float64 vector of any length, its length in *n. */
static int get_vector(PyObject *obj, Py_buffer *view, Py_ssize_t *n) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    const char *f = view->format ? view->format : "B";
    if (f[0] == '<' || f[0] == '=' || f[0] == '@') f++;
    if (strcmp(f, "d") != 0 || view->len % (Py_ssize_t)sizeof(double) != 0) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "expected float64 values");
        return -1;
    }
    *n = view->len / (Py_ssize_t)sizeof(double);
    return 0;
}

/* update(mean, m2, count, w_new, w_old, biased, rm, rv, rm_out, rv_out, pop_count, pop_mean,
 * pop_m2, pop_out): pop_out is one (3, c) float64 block, the merged count, mean and M2. */
static PyObject *update(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[7], *ro[4];
    double w_new, w_old;
    int biased;
    if (!PyArg_ParseTuple(args, "OOOddpOOOOOOOO", &o[0], &o[1], &o[2], &w_new, &w_old, &biased,
                          &ro[0], &ro[1], &ro[2], &ro[3], &o[3], &o[4], &o[5], &o[6]))
        return NULL;
    Py_buffer d[7]; /* mean, m2, count, pc, pm, pm2, out (3c) */
    Input r[4];     /* rm, rv, out_rm, out_rv */
    int nd = 1, nr = 0;
    Py_ssize_t c;
    if (get_vector(o[0], &d[0], &c) < 0) return NULL;
    for (; nd < 7; nd++)
        if (get_doubles(o[nd], &d[nd], nd == 6 ? 3 * c : c, nd == 6) < 0) goto fail;
    if (running_inputs(ro, r, &nr, c) < 0) goto fail;
    {
        const int track = r[0].view.buf && r[1].view.buf && r[2].view.buf && r[3].view.buf;
        double *out = d[6].buf;
        update_loop(c, d[0].buf, d[1].buf, d[2].buf, w_new, w_old, biased, r, track, d[3].buf,
                    d[4].buf, d[5].buf, out, out + c, out + 2 * c);
    }
    release_running(r, nr);
    for (int k = 0; k < nd; k++) PyBuffer_Release(&d[k]);
    Py_RETURN_NONE;
fail:
    release_running(r, nr);
    for (int k = 0; k < nd; k++) PyBuffer_Release(&d[k]);
    return NULL;
}

/* A whole train-mode step in one call (the per-call cost of some thirty NumPy operations on
 * (C,) vectors dominates small fits): moments, the output (when y is not None), the running
 * EMA and the population merge, on nthreads threads. out is one (6, c) float64 block: the
 * batch's count, mean and M2, then the population's after the merge. Returns whether every
 * batch M2 is finite (the caller applies the NaN policy and discards the outputs). */
static PyObject *fit_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    Py_ssize_t a, c, b, nt;
    double eps, w_new, w_old;
    if (nargs != 20) {
        PyErr_SetString(PyExc_TypeError, "fit_step takes 20 arguments");
        return NULL;
    }
    if (ssize_arg(args[1], &a) < 0 || ssize_arg(args[2], &c) < 0 || ssize_arg(args[3], &b) < 0 ||
        ssize_arg(args[4], &nt) < 0 || double_arg(args[5], &eps) < 0 ||
        double_arg(args[6], &w_new) < 0 || double_arg(args[7], &w_old) < 0)
        return NULL;
    const int biased = PyObject_IsTrue(args[8]);
    if (biased < 0) return NULL;
    PyObject *xo = args[0], *wo = args[9], *bo = args[10], *yo = args[16];
    PyObject *ro[4] = {args[11], args[12], args[18], args[19]};
    PyObject *o[4] = {args[13], args[14], args[15], args[17]};
    Input in, out, w, bb, r[4];
    Py_buffer d[4]; /* pop count, pop mean, pop M2, out (6c) */
    int nd = 0, nr = 0, has_y = yo != Py_None, finite = 1, rc = 0;
    w.view.buf = NULL;
    bb.view.buf = NULL;
    out.view.buf = NULL;
    if (get_input(xo, &in, 0) < 0) return NULL;
    if (check_shape(&in, a, c, b, 0, a) < 0 || a * b < 1) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "empty batch");
        PyBuffer_Release(&in.view);
        return NULL;
    }
    if (optional_input(wo, &w, c) < 0) goto fail;
    if (optional_input(bo, &bb, c) < 0) goto fail;
    for (; nd < 4; nd++)
        if (get_doubles(o[nd], &d[nd], nd == 3 ? 6 * c : c, nd == 3) < 0) goto fail;
    if (running_inputs(ro, r, &nr, c) < 0) goto fail;
    if (has_y) {
        if (get_input(yo, &out, 1) < 0) goto fail;
        if (out.is_double != in.is_double || out.view.len != in.view.len) {
            PyBuffer_Release(&out.view);
            out.view.buf = NULL;
            PyErr_SetString(PyExc_ValueError, "output must match the input's dtype and size");
            goto fail;
        }
    }
    {
        double *cnt = d[3].buf, *mean = cnt + c, *m2 = mean + c;
        double *scratch = PyMem_RawMalloc(2 * c * sizeof(double)); /* scale, offset */
        if (scratch == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        GIL_RELEASE(a * c * b);
        rc = moments_rows(&in, a, c, b, (int)nt, mean, m2);
        const double n = (double)(a * b);
        for (Py_ssize_t j = 0; j < c; j++) {
            cnt[j] = n;
            finite &= isfinite(m2[j]) != 0;
        }
        if (has_y && rc == 0) {
            double *scale = scratch, *offset = scratch + c;
            for (Py_ssize_t j = 0; j < c; j++) {
                scale[j] = bn_scale(m2[j] / n, eps, &w, j);
                offset[j] = bb.view.buf != NULL ? at(&bb, j) : 0.0;
            }
            affine_rows(&in, &out, a, c, b, (int)nt, mean, scale, offset);
        }
        GIL_ACQUIRE();
        PyMem_RawFree(scratch);
        if (rc < 0) {
            PyErr_NoMemory();
            goto fail;
        }
        const int track = r[0].view.buf && r[1].view.buf && r[2].view.buf && r[3].view.buf;
        update_loop(c, mean, m2, cnt, w_new, w_old, biased, r, track, d[0].buf, d[1].buf,
                    d[2].buf, m2 + c, m2 + 2 * c, m2 + 3 * c);
    }
fail:
    if (out.view.buf != NULL) PyBuffer_Release(&out.view);
    release_running(r, nr);
    for (int k = 0; k < nd; k++) PyBuffer_Release(&d[k]);
    if (bb.view.buf != NULL) PyBuffer_Release(&bb.view);
    if (w.view.buf != NULL) PyBuffer_Release(&w.view);
    PyBuffer_Release(&in.view);
    return PyErr_Occurred() ? NULL : PyBool_FromLong(finite);
}

/* normalize(x, a, c, b, nthreads, mean, m2, count, eps, weight, bias, y_out) -> bool: the
 * train-mode output, y = (x - mean) * weight / sqrt(M2 / count + eps) + bias (weight and bias
 * may be None), the per-channel factors and the loop in one call; True when all y are
 * finite. */
static PyObject *normalize(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *yo, *o[3], *wo, *bo;
    Py_ssize_t a, c, b;
    double eps;
    int nt, finite = 1;
    if (!PyArg_ParseTuple(args, "OnnniOOOdOOO", &xo, &a, &c, &b, &nt, &o[0], &o[1], &o[2], &eps,
                          &wo, &bo, &yo))
        return NULL;
    Input in, out, w, bb;
    Py_buffer d[3]; /* mean, m2, count */
    int nd = 0;
    w.view.buf = NULL;
    bb.view.buf = NULL;
    if (input_output(xo, yo, &in, &out, a, c, b) < 0) return NULL;
    for (; nd < 3; nd++)
        if (get_doubles(o[nd], &d[nd], c, 0) < 0) goto fail;
    if (optional_input(wo, &w, c) < 0) goto fail;
    if (optional_input(bo, &bb, c) < 0) goto fail;
    {
        const double *mean = d[0].buf, *m2 = d[1].buf, *cnt = d[2].buf;
        double *scratch = PyMem_RawMalloc(2 * c * sizeof(double)); /* scale, offset */
        if (scratch == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        double *scale = scratch, *offset = scratch + c;
        for (Py_ssize_t j = 0; j < c; j++) {
            scale[j] = bn_scale(m2[j] / cnt[j], eps, &w, j);
            offset[j] = bb.view.buf != NULL ? at(&bb, j) : 0.0;
        }
        GIL_RELEASE(a * c * b);
        finite = affine_rows(&in, &out, a, c, b, nt, mean, scale, offset);
        GIL_ACQUIRE();
        PyMem_RawFree(scratch);
    }
fail:
    if (bb.view.buf != NULL) PyBuffer_Release(&bb.view);
    if (w.view.buf != NULL) PyBuffer_Release(&w.view);
    for (int k = 0; k < nd; k++) PyBuffer_Release(&d[k]);
    PyBuffer_Release(&out.view);
    PyBuffer_Release(&in.view);
    return PyErr_Occurred() ? NULL : PyBool_FromLong(finite);
}

/* drift(mean, m2, count, rm, rv, eps, out): a batch's drift against the running statistics,
 * the formulas of bncore.drift in the same order; out is one (3, c) float64 block: mean
 * shift, log variance ratio, KL. C's log is glibc's (correctly rounded in practice), which may
 * differ from NumPy's SIMD log in the last bit. */
static PyObject *drift(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *o[4], *ro[2];
    double eps;
    if (!PyArg_ParseTuple(args, "OOOOOdO", &o[0], &o[1], &o[2], &ro[0], &ro[1], &eps, &o[3]))
        return NULL;
    Py_buffer d[4]; /* mean, m2, count, out (3c) */
    Input r[2];
    int nd = 1, nr = 0;
    Py_ssize_t c;
    if (get_vector(o[0], &d[0], &c) < 0) return NULL;
    for (; nd < 4; nd++)
        if (get_doubles(o[nd], &d[nd], nd == 3 ? 3 * c : c, nd == 3) < 0) goto fail;
    for (; nr < 2; nr++) {
        if (get_input(ro[nr], &r[nr], 0) < 0) goto fail;
        if (r[nr].view.len != c * r[nr].view.itemsize) {
            PyBuffer_Release(&r[nr].view);
            PyErr_SetString(PyExc_ValueError, "running buffer length does not match");
            goto fail;
        }
    }
    {
        const double *mean = d[0].buf, *m2 = d[1].buf, *cnt = d[2].buf;
        double *shift = d[3].buf, *ratio = shift + c, *kl = ratio + c;
        for (Py_ssize_t j = 0; j < c; j++) {
            const double vb = m2[j] / cnt[j] + eps, vr = at(&r[1], j) + eps;
            const double dm = mean[j] - at(&r[0], j);
            shift[j] = dm / sqrt(vr);
            ratio[j] = log(vb / vr);
            kl[j] = 0.5 * (log(vr / vb) + (vb + dm * dm) / vr - 1.0);
        }
    }
fail:
    for (int k = 0; k < nr; k++) PyBuffer_Release(&r[k].view);
    for (int k = 0; k < nd; k++) PyBuffer_Release(&d[k]);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

/* NumPy's pairwise summation of float64 (numpy/_core/src/umath/loops_utils.h.src), so that
 * a mean here has the bits of ndarray.mean(). */
static double pairwise_sum(const double *a, Py_ssize_t n) {
    if (n < 8) {
        double res = 0.;
        for (Py_ssize_t i = 0; i < n; i++) res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8];
        Py_ssize_t i;
        for (int k = 0; k < 8; k++) r[k] = a[k];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int k = 0; k < 8; k++) r[k] += a[i + k];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    Py_ssize_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

/* The max of |v| (NaN if any is NaN, as NumPy's max). */
static double abs_max(const double *v, Py_ssize_t n, int absolute) {
    double m = absolute ? fabs(v[0]) : v[0];
    for (Py_ssize_t j = 0; j < n; j++) {
        const double x = absolute ? fabs(v[j]) : v[j];
        if (isnan(x)) return x;
        if (x > m) m = x;
    }
    return m;
}

/* Whether channel i comes before channel j in a stable ascending sort of -kl with NaN last
 * (NumPy's argsort(kind="stable")), for i > j. */
static inline int before(const double *kl, Py_ssize_t i, Py_ssize_t j) {
    const double ki = -kl[i], kj = -kl[j];
    if (isnan(ki)) return 0;
    return isnan(kj) || ki < kj;
}

/* drift_summary(kl, shift, ratio, top) -> (max_kl, mean_kl, max |shift|, max |ratio|, the top
 * channels by KL): Drift.summary in one pass, with NumPy's bits (pairwise mean, NaN-propagating
 * max, stable argsort of -kl with NaN last). */
static PyObject *drift_summary(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ko, *so, *ro, *res = NULL;
    Py_ssize_t top, c, ns = 0, found = 0;
    if (!PyArg_ParseTuple(args, "OOOn", &ko, &so, &ro, &top)) return NULL;
    Py_buffer kv, sv, rv;
    if (get_vector(ko, &kv, &c) < 0) return NULL;
    if (c < 1 || top < 0) {
        PyErr_SetString(PyExc_ValueError, "expected at least one channel and top >= 0");
        goto fail_k;
    }
    if (get_doubles(so, &sv, c, 0) < 0) goto fail_k;
    if (get_doubles(ro, &rv, c, 0) < 0) goto fail_s;
    {
        const double *kl = kv.buf;
        if (top > c) top = c;
        Py_ssize_t *order = PyMem_Malloc((top > 0 ? top : 1) * sizeof(Py_ssize_t));
        if (order == NULL) {
            PyErr_NoMemory();
            goto fail_r;
        }
        for (Py_ssize_t j = 0; j < c; j++) { /* insertion into the best top so far */
            Py_ssize_t p = found;
            while (p > 0 && before(kl, j, order[p - 1])) p--;
            if (p >= top) continue;
            if (found < top) found++;
            memmove(order + p + 1, order + p, (found - 1 - p) * sizeof(Py_ssize_t));
            order[p] = j;
        }
        PyObject *channels = PyList_New(found);
        for (; channels != NULL && ns < found; ns++)
            PyList_SET_ITEM(channels, ns, PyLong_FromSsize_t(order[ns]));
        PyMem_Free(order);
        if (channels != NULL)
            res = Py_BuildValue("ddddN", abs_max(kl, c, 0), pairwise_sum(kl, c) / (double)c,
                                abs_max(sv.buf, c, 1), abs_max(rv.buf, c, 1), channels);
    }
fail_r:
    PyBuffer_Release(&rv);
fail_s:
    PyBuffer_Release(&sv);
fail_k:
    PyBuffer_Release(&kv);
    return res;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

static PyMethodDef methods[] = {
    {"moments", moments, METH_VARARGS,
     "moments(x, a, c, b, row0, row1, mean_out, m2_out) -> bool: per-channel mean and M2 "
     "(float64) of rows [row0, row1) of x viewed as (a, c, b); True when every M2 is finite."},
    {"affine", affine, METH_VARARGS,
     "affine(x, a, c, b, row0, row1, center, scale, offset, out) -> bool: out = (x - center) * "
     "scale + offset in double, rounded once, on rows [row0, row1); True when all are finite."},
    {"scale_shift", scale_shift, METH_VARARGS,
     "scale_shift(mean, var, eps, weight, bias, scale_out, shift_out): weight / sqrt(var + "
     "eps) and bias - mean * scale, per channel (weight and bias may be None)."},
    {"update", update, METH_VARARGS,
     "update(mean, m2, count, w_new, w_old, biased, rm, rv, rm_out, rv_out, pop_count, "
     "pop_mean, pop_m2, pop_out): running EMA (rm/rv None when untracked) and Chan merge into "
     "the (3, c) block pop_out."},
    {"moments_mt", moments_mt, METH_VARARGS,
     "moments_mt(x, a, c, b, nthreads, mean_out, m2_out) -> bool: moments over all rows, split "
     "over nthreads OpenMP threads (one without OpenMP)."},
    {"affine_mt", affine_mt, METH_VARARGS,
     "affine_mt(x, a, c, b, nthreads, center, scale, offset, out) -> bool: affine over all "
     "rows, split over nthreads OpenMP threads (one without OpenMP)."},
    {"stats", stats, METH_VARARGS,
     "stats(x, a, c, b, nthreads, out) -> bool: count, mean and M2 per channel into the (3, c) "
     "block out; True when every M2 is finite."},
    {"normalize", normalize, METH_VARARGS,
     "normalize(x, a, c, b, nthreads, mean, m2, count, eps, weight, bias, out) -> bool: "
     "(x - mean) * weight / sqrt(m2 / count + eps) + bias; True when all are finite."},
    {"fit_step", (PyCFunction)(void (*)(void))fit_step, METH_FASTCALL,
     "fit_step(x, a, c, b, nthreads, eps, w_new, w_old, biased, weight, bias, rm, rv, "
     "pop_count, pop_mean, pop_m2, y_out, out, rm_out, rv_out) -> bool: a whole train-mode "
     "step; out is the (6, c) block of batch and merged population moments."},
    {"drift", drift, METH_VARARGS,
     "drift(mean, m2, count, rm, rv, eps, out): mean shift, log variance ratio and KL into the "
     "(3, c) block out."},
    {"drift_summary", drift_summary, METH_VARARGS,
     "drift_summary(kl, shift, ratio, top) -> (max_kl, mean_kl, max_abs_shift, max_abs_ratio, "
     "top_channels)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cpu(void) {
    PyObject *m = PyModule_Create(&module);
#ifdef _OPENMP
    if (m != NULL && PyModule_AddIntConstant(m, "OPENMP", 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#else
    if (m != NULL && PyModule_AddIntConstant(m, "OPENMP", 0) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    return m;
}
