// Host-side helpers shared by the op_host tiling functions of mindformers_ds' AscendC kernels.
// Row-wise ops split their rows over the AI cores and stream each core's rows through the
// unified buffer (UB) in tiles that fit it with double buffering.
#pragma once
#include <algorithm>
#include <cstdint>

#include "register/op_def_registry.h"
#include "tiling/platform/platform_ascendc.h"

namespace mfds_tiling {

constexpr uint64_t kBlockBytes = 32;   // UB alignment unit
constexpr uint32_t kBufferNum = 2;     // double buffering: copy-in of tile i+1 overlaps compute of tile i

inline uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

struct RowSplit {
  uint32_t cores;        // AI cores used
  uint64_t rowsPerCore;  // rows of every core but the last
  uint64_t lastRows;     // rows of the last core (>= 1)
  uint32_t tileRows;     // rows per UB tile
};

// `bytesPerRow`: UB bytes one row needs across all live buffers (inputs, outputs, temporaries),
// already multiplied by kBufferNum for the double-buffered queues.
inline RowSplit SplitRows(gert::TilingContext *ctx, uint64_t rows, uint64_t bytesPerRow, uint64_t fixedBytes) {
  auto platform = platform_ascendc::PlatformAscendC(ctx->GetPlatformInfo());
  uint64_t ubSize = 0;
  platform.GetCoreMemSize(platform_ascendc::CoreMemType::UB, ubSize);
  const uint32_t coreNum = std::max<uint32_t>(1, platform.GetCoreNumAiv());
  RowSplit s{};
  s.cores = static_cast<uint32_t>(std::min<uint64_t>(coreNum, std::max<uint64_t>(rows, 1)));
  s.rowsPerCore = (rows + s.cores - 1) / s.cores;
  s.cores = static_cast<uint32_t>((rows + s.rowsPerCore - 1) / std::max<uint64_t>(s.rowsPerCore, 1));
  s.cores = std::max<uint32_t>(s.cores, 1);
  s.lastRows = rows - s.rowsPerCore * (s.cores - 1);
  const uint64_t budget = ubSize > fixedBytes ? ubSize - fixedBytes : 0;
  s.tileRows = static_cast<uint32_t>(std::max<uint64_t>(1, std::min<uint64_t>(s.rowsPerCore, budget / bytesPerRow)));
  return s;
}

inline uint64_t Numel(const gert::Shape &shape) {
  uint64_t n = 1;
  for (size_t i = 0; i < shape.GetDimNum(); ++i) n *= shape.GetDim(i);
  return n;
}

inline uint64_t LastDim(const gert::Shape &shape) { return shape.GetDim(shape.GetDimNum() - 1); }

// Save the tiling data, the block dim and the workspace size (user bytes + the library's own).
template <typename TilingData>
inline void SaveTiling(gert::TilingContext *ctx, TilingData &tiling, uint32_t blockDim, size_t workspace = 0) {
  ctx->SetBlockDim(blockDim);
  tiling.SaveToBuffer(ctx->GetRawTilingData()->GetData(), ctx->GetRawTilingData()->GetCapacity());
  ctx->GetRawTilingData()->SetDataSize(tiling.GetDataSize());
  auto platform = platform_ascendc::PlatformAscendC(ctx->GetPlatformInfo());
  ctx->GetWorkspaceSizes(1)[0] = workspace + platform.GetLibApiWorkSpaceSize();
}

// The common row split of a [rows, cols] problem into `t` (the op fills aux0..aux3 itself).
template <typename TilingData>
inline RowSplit FillRows(gert::TilingContext *ctx, TilingData &t, uint64_t rows, uint64_t cols,
                         uint64_t bytesPerRow, uint64_t fixedBytes) {
  RowSplit s = SplitRows(ctx, rows, bytesPerRow, fixedBytes);
  t.set_rows(rows);
  t.set_cols(static_cast<uint32_t>(cols));
  t.set_cores(s.cores);
  t.set_rowsPerCore(s.rowsPerCore);
  t.set_lastRows(s.lastRows);
  t.set_tileRows(s.tileRows);
  return s;
}

}  // namespace mfds_tiling
