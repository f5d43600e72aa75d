// DeepSeek router top-k on float32 logits [N, E] (the semantics of composite.router_topk).
//   RouterTopk:     logits [N, E], bias [E], params [8]          -> weights [N, k], idx [N, k] i32, scores [N, E]
//   RouterTopkGrad: logits, scores [N, E], idx [N, k], dweights [N, k], dscores [N, E], params [8]
//                                                                -> dlogits [N, E], dbias [E] (zeros)
// params: top_k, n_group, topk_group, scoring (0 softmax, 1 sigmoid), method (0 greedy,
// 1 group_limited_greedy, 2 noaux_tc), norm_topk_prob, routed_scaling_factor, has_bias.
// Experts are returned in descending order of their (biased) choice score, lower index
// first on ties, as ops.topk orders them.
#include <algorithm>
#include <limits>
#include <numeric>

#include "common.h"

namespace {
struct Params {
  int k, groups, topk_groups, sigmoid, method, norm, has_bias;
  float scale;
  explicit Params(const float *p)
      : k(static_cast<int>(p[0])), groups(static_cast<int>(p[1])), topk_groups(static_cast<int>(p[2])),
        sigmoid(static_cast<int>(p[3])), method(static_cast<int>(p[4])), norm(static_cast<int>(p[5])),
        has_bias(static_cast<int>(p[7])), scale(p[6]) {}
  bool normalised() const { return norm && (sigmoid || k > 1); }  // V3 always; V2 only for k > 1
};

void scores_of(const float *logit, float *score, int64_t e, bool sigmoid) {
  if (sigmoid) {
    for (int64_t j = 0; j < e; ++j) score[j] = mfds::sigmoid(logit[j]);
    return;
  }
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < e; ++j) mx = std::max(mx, logit[j]);
  float sum = 0.0f;
  for (int64_t j = 0; j < e; ++j) sum += (score[j] = std::exp(logit[j] - mx));
  for (int64_t j = 0; j < e; ++j) score[j] /= sum;
}

// the k best of `choice` [e], descending, ties to the lower index
void top_k(const float *choice, int64_t e, int k, int32_t *out, std::vector<int32_t> &order) {
  order.resize(e);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
    return choice[a] > choice[b] || (choice[a] == choice[b] && a < b);
  });
  std::copy(order.begin(), order.begin() + k, out);
}
}  // namespace

MFDS_AOT(RouterTopk) {
  if (nparam != 6 || !mfds::is(dtypes[0], "float32")) return 1;
  const float *logits = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  const Params p(static_cast<const float *>(params[2]));
  float *weights = static_cast<float *>(params[3]);
  int32_t *idx = static_cast<int32_t *>(params[4]);
  float *scores = static_cast<float *>(params[5]);
  const int64_t n = shapes[0][0], e = shapes[0][1];
  const int64_t per_group = p.groups > 0 ? e / p.groups : e;
#pragma omp parallel
  {
    std::vector<float> choice(e), gscore(std::max(p.groups, 1));
    std::vector<int32_t> order, gsel(std::max(p.topk_groups, 1));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      float *s = scores + t * e;
      scores_of(logits + t * e, s, e, p.sigmoid);
      for (int64_t j = 0; j < e; ++j) choice[j] = s[j] + (p.has_bias ? bias[j] : 0.0f);
      if (p.method != 0 && p.groups > 1) {
        for (int g = 0; g < p.groups; ++g) {
          const float *c = choice.data() + g * per_group;
          if (p.method == 2) {  // noaux_tc: sum of the group's top-2
            float a = -std::numeric_limits<float>::infinity(), b = a;
            for (int64_t j = 0; j < per_group; ++j) {
              if (c[j] > a) { b = a; a = c[j]; } else if (c[j] > b) { b = c[j]; }
            }
            gscore[g] = a + b;
          } else {               // group_limited_greedy: the group's best
            gscore[g] = *std::max_element(c, c + per_group);
          }
        }
        top_k(gscore.data(), p.groups, p.topk_groups, gsel.data(), order);
        std::vector<char> keep(p.groups, 0);
        for (int g = 0; g < p.topk_groups; ++g) keep[gsel[g]] = 1;
        const float fill = p.method == 2 ? -std::numeric_limits<float>::infinity() : 0.0f;
        for (int g = 0; g < p.groups; ++g)
          if (!keep[g]) std::fill(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group, fill);
      }
      int32_t *it = idx + t * p.k;
      top_k(choice.data(), e, p.k, it, order);
      float *wt = weights + t * p.k;
      float sum = 0.0f;
      for (int j = 0; j < p.k; ++j) sum += (wt[j] = s[it[j]]);
      const float mult = p.normalised() ? (p.sigmoid ? p.scale : 1.0f) / (sum + 1e-20f) : p.scale;
      for (int j = 0; j < p.k; ++j) wt[j] *= mult;
    }
  }
  return 0;
}

MFDS_AOT(RouterTopkGrad) {
  if (nparam != 8 || !mfds::is(dtypes[0], "float32") || !mfds::is(dtypes[2], "int32")) return 1;
  const float *scores = static_cast<const float *>(params[1]);
  const int32_t *idx = static_cast<const int32_t *>(params[2]);
  const float *dweights = static_cast<const float *>(params[3]);
  const float *dscores = static_cast<const float *>(params[4]);
  const Params p(static_cast<const float *>(params[5]));
  float *dlogits = static_cast<float *>(params[6]);
  float *dbias = static_cast<float *>(params[7]);
  const int64_t n = shapes[0][0], e = shapes[0][1];
  std::memset(dbias, 0, sizeof(float) * e);  // the bias only steers the choice: no gradient
#pragma omp parallel
  {
    std::vector<float> ds(e);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      const float *s = scores + t * e;
      const int32_t *it = idx + t * p.k;
      const float *dw = dweights + t * p.k;
      std::copy(dscores + t * e, dscores + (t + 1) * e, ds.begin());
      if (p.normalised()) {  // w_j = c * s_j / (S + eps)
        const float c = p.sigmoid ? p.scale : 1.0f;
        float sum = 0.0f, dot = 0.0f;
        for (int j = 0; j < p.k; ++j) sum += s[it[j]];
        const float den = sum + 1e-20f;
        for (int j = 0; j < p.k; ++j) dot += dw[j] * s[it[j]];
        for (int j = 0; j < p.k; ++j) ds[it[j]] += c * (dw[j] / den - dot / (den * den));
      } else {
        for (int j = 0; j < p.k; ++j) ds[it[j]] += p.scale * dw[j];
      }
      float *dl = dlogits + t * e;
      if (p.sigmoid) {
        for (int64_t j = 0; j < e; ++j) dl[j] = ds[j] * s[j] * (1.0f - s[j]);
      } else {
        const float proj = mfds::dot(ds.data(), s, e);
        for (int64_t j = 0; j < e; ++j) dl[j] = s[j] * (ds[j] - proj);
      }
    }
  }
  return 0;
}
