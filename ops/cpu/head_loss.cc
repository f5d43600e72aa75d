// The LM head and its cross-entropy in one op, without the [T, V] logits in memory:
//
//   LmHeadNll: h [T, D], w [V, D], targets [T] int32 -> loss [1], dh [T, D], dw [V, D]
//
// loss = sum over tokens with 0 <= target < V of logsumexp(h w^T) - (h w^T)[target]; other
// targets (IGNORE_INDEX) count nothing and get no gradient. The loss is a scalar, so its
// gradient with respect to h and w is the upstream scalar times (dh, dw) of the loss itself:
// the op computes those in the same pass over each chunk of logits (softmax - onehot is at
// hand there), and the backward only scales them. The logits are made chunk by chunk (kRows
// tokens at a time, all of the vocabulary) and never all at once: same FLOPs as head + loss
// + their backward, no logits kept for the backward, no recompute.
//
// Threads take chunks of rows (each dnnl_sgemm runs on its calling thread: MindSpore's oneDNN
// is built for a threadpool runtime); each thread adds its dw into its own buffer, summed at
// the end.
#include "common.h"

#include <algorithm>
#include <limits>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {
constexpr int64_t kRows = 128;
}  // namespace

MFDS_AOT(LmHeadNll) {
  if (nparam != 6 || !mfds::is(dtypes[0], "float32") || !mfds::is(dtypes[2], "int32")) return 1;
  if (ndims[0] != 2 || ndims[1] != 2 || ndims[2] != 1) return 1;
  const float *h = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const int32_t *target = static_cast<const int32_t *>(params[2]);
  float *loss = static_cast<float *>(params[3]);
  float *dh = static_cast<float *>(params[4]);
  float *dw = static_cast<float *>(params[5]);
  const int64_t t = shapes[0][0], d = shapes[0][1], v = shapes[1][0];
  if (shapes[1][1] != d || shapes[2][0] != t) return 1;
  const int64_t chunks = (t + kRows - 1) / kRows;
#ifdef _OPENMP
  const int threads = std::max<int>(1, std::min<int64_t>(omp_get_max_threads(), chunks));
#else
  const int threads = 1;
#endif
  // thread 0 adds straight into dw; the others into their own buffers
  std::vector<float> dw_threads(static_cast<size_t>(threads - 1) * v * d, 0.0f);
  std::memset(dw, 0, sizeof(float) * v * d);
  double total = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
#ifdef _OPENMP
    const int me = omp_get_thread_num();
#else
    const int me = 0;
#endif
    float *my_dw = me == 0 ? dw : dw_threads.data() + static_cast<size_t>(me - 1) * v * d;
    std::vector<float> logits(kRows * v);
#pragma omp for schedule(dynamic)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t r0 = c * kRows, n = std::min(kRows, t - r0);
      float *z = logits.data();
      mfds::sgemm('N', 'T', n, v, d, 1.0f, h + r0 * d, d, w, d, 0.0f, z, v);
      for (int64_t i = 0; i < n; ++i) {
        float *zi = z + i * v;
        const int32_t y = target[r0 + i];
        if (y < 0 || y >= v) {  // ignored: no loss, no gradient
          std::memset(zi, 0, sizeof(float) * v);
          continue;
        }
        const float zy = zi[y];
        float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
        for (int64_t j = 0; j < v; ++j) m = std::max(m, zi[j]);
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < v; ++j) sum += (zi[j] = mfds::fast_exp(zi[j] - m));
        total += static_cast<double>(std::log(sum) - (zy - m));  // -log p(y)
        const float inv = 1.0f / sum;
#pragma omp simd
        for (int64_t j = 0; j < v; ++j) zi[j] *= inv;  // softmax
        zi[y] -= 1.0f;                                   // d loss / d logits
      }
      mfds::sgemm('N', 'N', n, d, v, 1.0f, z, v, w, d, 0.0f, dh + r0 * d, d);
      mfds::sgemm('T', 'N', v, d, n, 1.0f, z, v, h + r0 * d, d, 1.0f, my_dw, d);
    }
  }
  for (int k = 1; k < threads; ++k) {
    const float *src = dw_threads.data() + static_cast<size_t>(k - 1) * v * d;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < v; ++r) mfds::axpy(dw + r * d, src + r * d, 1.0f, d);
  }
  loss[0] = static_cast<float>(total);
  return 0;
}
