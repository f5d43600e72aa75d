// Rotary position embedding on x [B, H, S, D] with cos/sin [B|1, 1, S, D/2] (shared by all
// heads; H may be 1, as for MLA's shared rope key).
//   Rope:     x, cos, sin, mode [1] -> y          RopeGrad: dy, cos, sin, mode [1] -> dx
// Pairs are (2i, 2i+1) when mode = 1 (DeepSeek's interleaved layout) or (i, i + D/2) when 0;
// the output puts every pair's first element, then every second: y = [x1 c - x2 s, x2 c + x1 s].
// The backward rotates by -theta and scatters back into the input layout.
#include "common.h"

namespace {
template <bool kInterleaved, bool kBackward>
int rope(void **params, int *ndims, int64_t **shapes) {
  const float *x = static_cast<const float *>(params[0]);
  const float *cs = static_cast<const float *>(params[1]);
  const float *sn = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  const int64_t b = shapes[0][0], h = shapes[0][1], s = shapes[0][2], d = shapes[0][3], half = d / 2;
  const int64_t cb = shapes[1][0];  // cos batch: B or 1
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t hi = 0; hi < h; ++hi) {
      for (int64_t si = 0; si < s; ++si) {
        const float *c = cs + ((cb == 1 ? 0 : bi) * s + si) * half;
        const float *sv = sn + ((cb == 1 ? 0 : bi) * s + si) * half;
        const float *xr = x + ((bi * h + hi) * s + si) * d;
        float *yr = y + ((bi * h + hi) * s + si) * d;
        for (int64_t i = 0; i < half; ++i) {
          const int64_t i1 = kInterleaved ? 2 * i : i, i2 = kInterleaved ? 2 * i + 1 : i + half;
          if (!kBackward) {
            const float x1 = xr[i1], x2 = xr[i2];
            yr[i] = x1 * c[i] - x2 * sv[i];
            yr[i + half] = x2 * c[i] + x1 * sv[i];
          } else {  // x = dy in the output layout; y = dx in the input layout
            const float d1 = xr[i], d2 = xr[i + half];
            yr[i1] = d1 * c[i] + d2 * sv[i];
            yr[i2] = -d1 * sv[i] + d2 * c[i];
          }
        }
      }
    }
  }
  return 0;
}
}  // namespace

MFDS_AOT(Rope) {
  if (nparam != 5 || !mfds::is(dtypes[0], "float32") || ndims[0] != 4) return 1;
  void *io[4] = {params[0], params[1], params[2], params[4]};
  return static_cast<const float *>(params[3])[0] > 0.5f ? rope<true, false>(io, ndims, shapes)
                                                        : rope<false, false>(io, ndims, shapes);
}

MFDS_AOT(RopeGrad) {
  if (nparam != 5 || !mfds::is(dtypes[0], "float32") || ndims[0] != 4) return 1;
  void *io[4] = {params[0], params[1], params[2], params[4]};
  return static_cast<const float *>(params[3])[0] > 0.5f ? rope<true, true>(io, ndims, shapes)
                                                        : rope<false, true>(io, ndims, shapes);
}
