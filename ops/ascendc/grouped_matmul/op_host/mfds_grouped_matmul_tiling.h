#pragma once
#include "register/tilingdata_base.h"
#include "tiling/tiling_api.h"

namespace optiling {
BEGIN_TILING_DATA_DEF(MfdsGroupedMatmulTilingData)
TILING_DATA_FIELD_DEF(uint32_t, rows);         // P: permuted token rows
TILING_DATA_FIELD_DEF(uint32_t, k);            // input width
TILING_DATA_FIELD_DEF(uint32_t, m);            // output width
TILING_DATA_FIELD_DEF(uint32_t, experts);      // E
TILING_DATA_FIELD_DEF(uint32_t, blocks);       // NB (rows of block b use expert block_expert[b])
TILING_DATA_FIELD_DEF(uint32_t, cores);
TILING_DATA_FIELD_DEF_STRUCT(TCubeTiling, mm);  // Y = X W^T (and dX = dY W)
TILING_DATA_FIELD_DEF_STRUCT(TCubeTiling, mmW); // dW = dY^T X (grad only)
END_TILING_DATA_DEF;

REGISTER_TILING_DATA_CLASS(MfdsGroupedMatmul, MfdsGroupedMatmulTilingData)
REGISTER_TILING_DATA_CLASS(MfdsGroupedMatmulGrad, MfdsGroupedMatmulTilingData)
}  // namespace optiling
