// The one limit the Sinkhorn kernels share between host and device: the backward keeps every
// step's output of its matrices in UB, so the host sizes its tiles for at most this many
// iterations (2 x iters - 1 steps). mindformers_ds/ops/kernels.py (ASCEND_SINKHORN_MAX_ITERS)
// keeps larger counts on the composite; tools/check_ops.py checks that the two agree.
#pragma once
#include <cstdint>

namespace mfds {
constexpr uint32_t kSinkhornMaxIters = 32;
}  // namespace mfds
