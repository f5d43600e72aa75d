// Shared helpers for the CPU kernels of mindformers_ds (MindSpore `aot` custom operators).
// Every kernel has the signature MindSpore calls:
//   extern "C" int Name(int nparam, void **params, int *ndims, int64_t **shapes,
//                       const char **dtypes, void *stream, void *extra);
// params holds the inputs then the outputs; 0 means success. Kernels are float32 only: the
// Python face falls back to the composite implementation for other dtypes.
#pragma once
#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#define MFDS_AOT(name) \
  extern "C" int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, \
                      void *stream, void *extra)

namespace mfds {

inline int64_t numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

inline bool is(const char *dtype, const char *want) { return std::strcmp(dtype, want) == 0; }

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// dot product of two contiguous float rows; the compiler vectorises it (-O3 -march=native)
inline float dot(const float *a, const float *b, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// exp(x) in float32 written so that loops over it vectorise (std::exp is a scalar libm call
// unless -ffast-math, which the kernels do not use): Cody-Waite reduction x = k ln2 + r, the
// degree-6 polynomial of Cephes' expf for exp(r), 2^k through the exponent bits. Within 2 ulp
// of std::exp; below -87.3 (where expf turns subnormal) it returns 0, so a score masked with
// -1e30 still gets exactly zero probability.
inline float fast_exp(float x) {
  // clamp with comparisons, not std::fmin/fmax: without -ffinite-math-only those are calls to
  // libm (NaN rules), which kept this loop scalar at ~7 ns per element
  float xc = x < -87.3365f ? -87.3365f : x;
  xc = xc > 88.7228f ? 88.7228f : xc;
  // k = round(x / ln2) by the 1.5 * 2^23 trick: std::floor would also be a libm call
  const float k = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &bits, sizeof(two_k));
  return x < -87.3365f ? 0.0f : p * two_k;
}

// y += alpha * x over contiguous rows
inline void axpy(float *y, const float *x, float alpha, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// Row-major C = alpha * op(A) op(B) + beta * C (op: 'N' or 'T'). Uses oneDNN's dnnl_sgemm from
// the libdnnl MindSpore already loaded (the same GEMM its MatMul runs on) when it is in the
// process, and plain loops otherwise (e.g. the library used through ctypes without MindSpore).
using SgemmFn = int (*)(char, char, int64_t, int64_t, int64_t, float, const float *, int64_t, const float *,
                        int64_t, float, float *, int64_t);

inline SgemmFn onednn_sgemm() {
  static SgemmFn fn = [] {
    void *h = dlopen("libdnnl.so.3", RTLD_NOW | RTLD_NOLOAD);
    return h ? reinterpret_cast<SgemmFn>(dlsym(h, "dnnl_sgemm")) : nullptr;
  }();
  return fn;
}

inline void sgemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                  const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (SgemmFn fn = onednn_sgemm()) {
    if (fn(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) == 0) return;
  }
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      float acc = 0.0f;
      for (int64_t p = 0; p < k; ++p) {
        const float av = ta == 'N' ? a[i * lda + p] : a[p * lda + i];
        const float bv = tb == 'N' ? b[p * ldb + j] : b[j * ldb + p];
        acc += av * bv;
      }
      c[i * ldc + j] = alpha * acc + (beta == 0.0f ? 0.0f : beta * c[i * ldc + j]);
    }
  }
}

}  // namespace mfds
