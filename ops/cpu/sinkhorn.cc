// mHC's Sinkhorn normalisation of the stream-mixing matrices (DeepSeek-V4), and its backward.
//   HcSinkhorn:     comb [R, n, n], params [2] = (iters, eps)          -> out [R, n, n]
//   HcSinkhornGrad: comb [R, n, n], dout [R, n, n], params (the same)  -> dcomb [R, n, n]
// Forward, per matrix c (row j, column k): first c <- c / (colsum(c) + eps), then iters - 1
// times c <- c / (rowsum(c) + eps) and c <- c / (colsum(c) + eps): 2 iters - 1 steps, as the
// composite (ops/composite.py: sinkhorn) runs them.
// A step y = c / (s + eps) over the columns (s_k = sum_j c_jk) has the backward
//   dc_jk = (dy_jk - sum_i dy_ik y_ik) / (s_k + eps)
// and over the rows likewise with the roles of j and k swapped. The backward recomputes its
// matrix's forward into a local buffer (every step's output and denominators: (2 iters) n^2 +
// 2 iters n floats), so nothing but comb is kept between the passes; the composite keeps every
// step's tensors, and ran its 39 reductions and divisions per connection as separate kernels.
#include "common.h"

namespace {

// One normalising step of c [n, n] in place; `cols`: over the columns (sum over j), else rows.
// den[n] receives the denominators (sum + eps).
inline void normalise(float *c, int n, bool cols, float eps, float *den) {
  for (int a = 0; a < n; ++a) {
    float s = 0.0f;
    for (int b = 0; b < n; ++b) s += cols ? c[b * n + a] : c[a * n + b];
    den[a] = s + eps;
  }
  for (int j = 0; j < n; ++j)
    for (int k = 0; k < n; ++k) c[j * n + k] /= den[cols ? k : j];
}

inline bool column_step(int t) { return t % 2 == 0; }  // step 0 over columns, then rows, columns, ...

}  // namespace

MFDS_AOT(HcSinkhorn) {
  if (nparam != 3 || !mfds::is(dtypes[0], "float32")) return 1;
  const float *comb = static_cast<const float *>(params[0]);
  const float *p = static_cast<const float *>(params[1]);
  float *out = static_cast<float *>(params[2]);
  const int n = static_cast<int>(shapes[0][ndims[0] - 1]);
  const int64_t rows = mfds::numel(ndims[0], shapes[0]) / (int64_t(n) * n);
  const int steps = 2 * static_cast<int>(p[0]) - 1;
  const float eps = p[1];
#pragma omp parallel
  {
    std::vector<float> den(n);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      float *c = out + r * n * n;
      std::memcpy(c, comb + r * n * n, sizeof(float) * n * n);
      for (int t = 0; t < steps; ++t) normalise(c, n, column_step(t), eps, den.data());
    }
  }
  return 0;
}

MFDS_AOT(HcSinkhornGrad) {
  if (nparam != 4 || !mfds::is(dtypes[0], "float32")) return 1;
  const float *comb = static_cast<const float *>(params[0]);
  const float *dout = static_cast<const float *>(params[1]);
  const float *p = static_cast<const float *>(params[2]);
  float *dcomb = static_cast<float *>(params[3]);
  const int n = static_cast<int>(shapes[0][ndims[0] - 1]);
  const int nn = n * n;
  const int64_t rows = mfds::numel(ndims[0], shapes[0]) / nn;
  const int steps = 2 * static_cast<int>(p[0]) - 1;
  const float eps = p[1];
#pragma omp parallel
  {
    std::vector<float> state(static_cast<size_t>(steps) * nn), den(static_cast<size_t>(steps) * n);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      // forward again: state[t] is step t's output, den[t] its denominators
      for (int t = 0; t < steps; ++t) {
        const float *from = t == 0 ? comb + r * nn : state.data() + (t - 1) * nn;
        std::memcpy(state.data() + t * nn, from, sizeof(float) * nn);
        normalise(state.data() + t * nn, n, column_step(t), eps, den.data() + t * n);
      }
      float *g = dcomb + r * nn;
      std::memcpy(g, dout + r * nn, sizeof(float) * nn);
      for (int t = steps - 1; t >= 0; --t) {
        const float *y = state.data() + t * nn, *d = den.data() + t * n;
        const bool cols = column_step(t);
        for (int a = 0; a < n; ++a) {   // a: the column (cols) or the row normalised
          float dot = 0.0f;
          for (int b = 0; b < n; ++b) {
            const int i = cols ? b * n + a : a * n + b;
            dot += g[i] * y[i];
          }
          for (int b = 0; b < n; ++b) {
            const int i = cols ? b * n + a : a * n + b;
            g[i] = (g[i] - dot) / d[a];
          }
        }
      }
    }
  }
  return 0;
}
