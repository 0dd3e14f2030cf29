// bncore's CUDA kernels: per-channel moments and the fused affine, for an input viewed as
// (a, c, b) (channel axis in the middle; see bncore.moments.channels_view), C order.
//
// Compiled at run time by CuPy (NVRTC, no headers) and, in the tests, by nvcc for sm_80/sm_90.
// Every kernel exists for float ("_f32") and double ("_f64") input; statistics are double.
//
// Moments: each thread sums its values shifted by the first value it sees (shifted sums in
// double: no E[x^2] - E[x]^2 cancellation while the shift is within a few standard deviations
// of the mean), turns them into (count, mean, M2), and threads, blocks and the grid merge
// those with Chan's pairwise formula. The grid merge is a second, O(C * G) launch.

#define BN_ROWS_Y 8      // block (32, BN_ROWS_Y) for the rows layout (b == 1)
#define BN_PLANE_T 256   // block of the planes layout (b > 1)

struct Acc {
    double n, mean, m2;
};

__device__ __forceinline__ Acc acc_merge(Acc x, Acc y) {
    const double n = x.n + y.n;
    if (n == 0.0) return x;
    const double frac = y.n / n;
    const double delta = y.mean - x.mean;
    Acc out;
    out.n = n;
    out.mean = x.mean + delta * frac;
    out.m2 = x.m2 + y.m2 + delta * delta * x.n * frac;
    return out;
}

// Shifted sums of one thread's values -> (count, mean, M2).
struct Shifted {
    double shift, s, q, n;
    bool started;
};

__device__ __forceinline__ void shifted_add(Shifted &t, double v, bool omit) {
    if (omit && v != v) return;  // NaN skipped under nan_policy 'omit'
    if (!t.started) {
        t.shift = v;
        t.started = true;
    }
    const double d = v - t.shift;
    t.s += d;
    t.q += d * d;
    t.n += 1.0;
}

__device__ __forceinline__ Acc shifted_acc(const Shifted &t) {
    Acc a;
    a.n = t.n;
    if (t.n == 0.0) {
        a.mean = 0.0;
        a.m2 = 0.0;
        return a;
    }
    a.mean = t.shift + t.s / t.n;
    a.m2 = t.q - t.s * (t.s / t.n);
    if (a.m2 < 0.0) a.m2 = 0.0;  // rounding of an exactly constant channel
    return a;
}

// Rows layout (b == 1): x is (a, c). grid (ceil(c / 32), G), block (32, BN_ROWS_Y).
// Writes the block's partial (n, mean, M2) per channel to part[blockIdx.y * c + j].
#define MOMENTS_ROWS(NAME, T)                                                                  \
    extern "C" __global__ void NAME(const T *__restrict__ x, long long a, long long c,          \
                                    long long omit, double *__restrict__ part_n,                     \
                                    double *__restrict__ part_mean,                            \
                                    double *__restrict__ part_m2) {                            \
        __shared__ Acc tile[BN_ROWS_Y][32];                                                    \
        const long long j = (long long)blockIdx.x * 32 + threadIdx.x;                         \
        Shifted t = {0.0, 0.0, 0.0, 0.0, false};                                               \
        if (j < c) {                                                                           \
            for (long long r = (long long)blockIdx.y * BN_ROWS_Y + threadIdx.y; r < a;        \
                 r += (long long)gridDim.y * BN_ROWS_Y)                                        \
                shifted_add(t, (double)x[r * c + j], omit != 0);                               \
        }                                                                                      \
        tile[threadIdx.y][threadIdx.x] = shifted_acc(t);                                       \
        __syncthreads();                                                                       \
        if (threadIdx.y == 0 && j < c) {                                                       \
            Acc total = tile[0][threadIdx.x];                                                  \
            for (int k = 1; k < BN_ROWS_Y; k++) total = acc_merge(total, tile[k][threadIdx.x]); \
            const long long o = (long long)blockIdx.y * c + j;                                 \
            part_n[o] = total.n;                                                               \
            part_mean[o] = total.mean;                                                         \
            part_m2[o] = total.m2;                                                             \
        }                                                                                      \
    }

MOMENTS_ROWS(moments_rows_f32, float)
MOMENTS_ROWS(moments_rows_f64, double)

// Planes layout (b > 1): x is (a, c, b). grid (c, G), block BN_PLANE_T; block (j, g) reads rows
// g, g + G, ... of channel j, its threads striding along the contiguous plane (coalesced).
#define MOMENTS_PLANES(NAME, T)                                                                \
    extern "C" __global__ void NAME(const T *__restrict__ x, long long a, long long c,          \
                                    long long b, long long omit, double *__restrict__ part_n,        \
                                    double *__restrict__ part_mean,                            \
                                    double *__restrict__ part_m2) {                            \
        __shared__ Acc tree[BN_PLANE_T];                                                       \
        const long long j = blockIdx.x;                                                        \
        Shifted t = {0.0, 0.0, 0.0, 0.0, false};                                               \
        for (long long i = blockIdx.y; i < a; i += gridDim.y) {                                \
            const T *p = x + (i * c + j) * b;                                                  \
            for (long long k = threadIdx.x; k < b; k += BN_PLANE_T)                            \
                shifted_add(t, (double)p[k], omit != 0);                                       \
        }                                                                                      \
        tree[threadIdx.x] = shifted_acc(t);                                                    \
        __syncthreads();                                                                       \
        for (int half = BN_PLANE_T / 2; half > 0; half >>= 1) {                                \
            if (threadIdx.x < half)                                                            \
                tree[threadIdx.x] = acc_merge(tree[threadIdx.x], tree[threadIdx.x + half]);    \
            __syncthreads();                                                                   \
        }                                                                                      \
        if (threadIdx.x == 0) {                                                                \
            const long long o = (long long)blockIdx.y * c + j;                                 \
            part_n[o] = tree[0].n;                                                             \
            part_mean[o] = tree[0].mean;                                                       \
            part_m2[o] = tree[0].m2;                                                           \
        }                                                                                      \
    }

MOMENTS_PLANES(moments_planes_f32, float)
MOMENTS_PLANES(moments_planes_f64, double)

// Grid merge: one thread per channel folds the G partials in order (deterministic), writes
// count, mean, M2 and the biased variance, and raises *nonfinite when M2 is NaN or Inf (the
// NaN policy reads that flag once, at the edge of the request).
extern "C" __global__ void moments_finish(const double *__restrict__ part_n,
                                          const double *__restrict__ part_mean,
                                          const double *__restrict__ part_m2, long long c,
                                          long long g, double *__restrict__ count,
                                          double *__restrict__ mean, double *__restrict__ m2,
                                          double *__restrict__ var, int *__restrict__ nonfinite) {
    const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    Acc total = {part_n[j], part_mean[j], part_m2[j]};
    for (long long k = 1; k < g; k++) {
        const long long o = k * c + j;
        Acc next = {part_n[o], part_mean[o], part_m2[o]};
        total = acc_merge(total, next);
    }
    count[j] = total.n;
    mean[j] = total.mean;
    m2[j] = total.m2;
    var[j] = total.n > 0.0 ? total.m2 / total.n : 0.0;
    if (!isfinite(total.m2) || !isfinite(total.mean)) atomicOr(nonfinite, 1);
}

// y = (x - center) * scale + offset per channel, in double, rounded once to T: two large
// terms never cancel in float (mean 1e6, std 1 keeps its 1e-7 digits). The (C,) double
// vectors come from bncore.batchnorm (scale = weight / sqrt(var + eps), offset = bias). With
// check set, a NaN or Inf input raises *nonfinite (nan_policy 'reject' on transform).
#define AFFINE_ROWS(NAME, T)                                                                   \
    extern "C" __global__ void NAME(const T *__restrict__ x, T *__restrict__ y, long long a,    \
                                    long long c, const double *__restrict__ center,            \
                                    const double *__restrict__ scale,                          \
                                    const double *__restrict__ offset, long long check,        \
                                    int *__restrict__ nonfinite) {                             \
        const long long j = (long long)blockIdx.x * 32 + threadIdx.x;                         \
        if (j >= c) return;                                                                    \
        const double mu = center[j], k = scale[j], beta = offset[j];                           \
        int bad = 0;                                                                           \
        for (long long r = (long long)blockIdx.y * BN_ROWS_Y + threadIdx.y; r < a;            \
             r += (long long)gridDim.y * BN_ROWS_Y) {                                          \
            const double v = (double)x[r * c + j];                                             \
            bad |= check && !isfinite(v);                                                      \
            y[r * c + j] = (T)((v - mu) * k + beta);                                       \
        }                                                                                      \
        if (bad) atomicOr(nonfinite, 1);                                                       \
    }

AFFINE_ROWS(affine_rows_f32, float)
AFFINE_ROWS(affine_rows_f64, double)

// Planes: grid (c, G), block BN_PLANE_T; the channel's parameters are computed once per thread.
#define AFFINE_PLANES(NAME, T)                                                                 \
    extern "C" __global__ void NAME(const T *__restrict__ x, T *__restrict__ y, long long a,    \
                                    long long c, long long b,                                  \
                                    const double *__restrict__ center,                         \
                                    const double *__restrict__ scale,                          \
                                    const double *__restrict__ offset, long long check,        \
                                    int *__restrict__ nonfinite) {                             \
        const long long j = blockIdx.x;                                                        \
        const double mu = center[j], k = scale[j], beta = offset[j];                           \
        int bad = 0;                                                                           \
        for (long long i = blockIdx.y; i < a; i += gridDim.y) {                                \
            const long long base = (i * c + j) * b;                                            \
            for (long long i2 = threadIdx.x; i2 < b; i2 += BN_PLANE_T) {                       \
                const double v = (double)x[base + i2];                                         \
                bad |= check && !isfinite(v);                                                  \
                y[base + i2] = (T)((v - mu) * k + beta);                                    \
            }                                                                                  \
        }                                                                                      \
        if (bad) atomicOr(nonfinite, 1);                                                       \
    }

AFFINE_PLANES(affine_planes_f32, float)
AFFINE_PLANES(affine_planes_f64, double)

// The O(C) step of a fit on the device, one launch: running EMA (keep * old + new_w * stat,
// the unbiased or biased batch variance as the convention stores it) and the population
// merged with the batch (Chan). Running buffers are T; everything else double.
#define UPDATE(NAME, T)                                                                        \
    extern "C" __global__ void NAME(                                                           \
        long long c, const double *__restrict__ count, const double *__restrict__ mean,        \
        const double *__restrict__ m2, double keep, double new_w, long long unbiased,                \
        const T *__restrict__ rm, const T *__restrict__ rv, T *__restrict__ rm_out,            \
        T *__restrict__ rv_out, const double *__restrict__ pc, const double *__restrict__ pm,  \
        const double *__restrict__ pm2, double *__restrict__ pc_out,                           \
        double *__restrict__ pm_out, double *__restrict__ pm2_out) {                           \
        const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;                 \
        if (j >= c) return;                                                                    \
        if (rm != nullptr) {                                                                   \
            const double v = m2[j] / (unbiased ? count[j] - 1.0 : count[j]);                   \
            rm_out[j] = (T)(keep * (double)rm[j] + new_w * mean[j]);                           \
            rv_out[j] = (T)(keep * (double)rv[j] + new_w * v);                                 \
        }                                                                                      \
        Acc pop = {pc[j], pm[j], pm2[j]};                                                      \
        Acc batch = {count[j], mean[j], m2[j]};                                                \
        Acc out = acc_merge(pop, batch);                                                       \
        pc_out[j] = out.n;                                                                     \
        pm_out[j] = out.mean;                                                                  \
        pm2_out[j] = out.m2;                                                                   \
    }

UPDATE(update_f32, float)
UPDATE(update_f64, double)
