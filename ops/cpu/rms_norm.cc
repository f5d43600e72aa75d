// RMSNorm over the last dim: y = w * x / sqrt(mean(x^2) + eps), and its backward.
//   RmsNorm:     x [R, D], w [D], eps [1]           -> y [R, D], rstd [R]
//   RmsNormGrad: dy [R, D], x [R, D], w [D], rstd [R] -> dx [R, D], dw [D]
// dx = rstd * w*dy - rstd^3 / D * x * sum(w*dy*x);  dw = sum over rows of dy * x * rstd.
#include "common.h"

MFDS_AOT(RmsNorm) {
  if (nparam != 5 || !mfds::is(dtypes[0], "float32")) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float eps = static_cast<const float *>(params[2])[0];
  float *y = static_cast<float *>(params[3]);
  float *rstd = static_cast<float *>(params[4]);
  const int64_t d = shapes[0][ndims[0] - 1];
  const int64_t rows = mfds::numel(ndims[0], shapes[0]) / d;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float *xr = x + r * d;
    const float rs = 1.0f / std::sqrt(mfds::dot(xr, xr, d) / static_cast<float>(d) + eps);
    rstd[r] = rs;
    float *yr = y + r * d;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) yr[i] = w[i] * (xr[i] * rs);
  }
  return 0;
}

MFDS_AOT(RmsNormGrad) {
  if (nparam != 6 || !mfds::is(dtypes[0], "float32")) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  const float *w = static_cast<const float *>(params[2]);
  const float *rstd = static_cast<const float *>(params[3]);
  float *dx = static_cast<float *>(params[4]);
  float *dw = static_cast<float *>(params[5]);
  const int64_t d = shapes[1][ndims[1] - 1];
  const int64_t rows = mfds::numel(ndims[1], shapes[1]) / d;
  std::memset(dw, 0, sizeof(float) * d);
#pragma omp parallel
  {
    std::vector<float> dw_local(d, 0.0f), wdy(d);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float *xr = x + r * d, *dyr = dy + r * d;
      const float rs = rstd[r];
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) wdy[i] = w[i] * dyr[i];
      const float proj = mfds::dot(wdy.data(), xr, d);
      const float c = rs * rs * rs * proj / static_cast<float>(d);
      float *dxr = dx + r * d;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) {
        dxr[i] = rs * wdy[i] - c * xr[i];
        dw_local[i] += dyr[i] * xr[i] * rs;
      }
    }
#pragma omp critical
    mfds::axpy(dw, dw_local.data(), 1.0f, d);
  }
  return 0;
}
