// Tiling data of the row-wise kernels (one definition; each op registers it under its name).
#pragma once
#include "register/tilingdata_base.h"

namespace optiling {
BEGIN_TILING_DATA_DEF(MfdsRowTilingData)
TILING_DATA_FIELD_DEF(uint64_t, rows);        // rows of the main input (all dims but the last)
TILING_DATA_FIELD_DEF(uint32_t, cols);        // its last dim
TILING_DATA_FIELD_DEF(uint32_t, cores);       // AI cores used
TILING_DATA_FIELD_DEF(uint64_t, rowsPerCore);
TILING_DATA_FIELD_DEF(uint64_t, lastRows);
TILING_DATA_FIELD_DEF(uint32_t, tileRows);    // rows per double-buffered UB tile
TILING_DATA_FIELD_DEF(uint32_t, aux0);        // op-specific sizes (heads, seq, k, experts...)
TILING_DATA_FIELD_DEF(uint32_t, aux1);
TILING_DATA_FIELD_DEF(uint32_t, aux2);
TILING_DATA_FIELD_DEF(uint32_t, aux3);
END_TILING_DATA_DEF;
}  // namespace optiling
