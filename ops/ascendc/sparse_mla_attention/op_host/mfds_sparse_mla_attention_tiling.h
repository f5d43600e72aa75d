// Tiling data of the top-k MLA attention kernels: the MLA dims (ops/cpu/mla_layout.h's layouts),
// the split of the (batch, head, query) rows over the AI cores and the keys per UB tile.
#pragma once
#include "register/tilingdata_base.h"

namespace optiling {
BEGIN_TILING_DATA_DEF(MfdsSparseAttentionTilingData)
TILING_DATA_FIELD_DEF(uint32_t, b);
TILING_DATA_FIELD_DEF(uint32_t, sq);
TILING_DATA_FIELD_DEF(uint32_t, sk);
TILING_DATA_FIELD_DEF(uint32_t, h);
TILING_DATA_FIELD_DEF(uint32_t, dn);          // q_nope / k_nope channels
TILING_DATA_FIELD_DEF(uint32_t, dr);          // rope channels (q_pe, the shared k_pe)
TILING_DATA_FIELD_DEF(uint32_t, dv);          // value channels
TILING_DATA_FIELD_DEF(uint32_t, k);           // chosen keys per query
TILING_DATA_FIELD_DEF(uint32_t, keyTile);     // chosen keys gathered into UB at once
TILING_DATA_FIELD_DEF(uint32_t, cores);
TILING_DATA_FIELD_DEF(uint64_t, rowsPerCore); // rows: B * H * Sq, in (batch, head, query) order
TILING_DATA_FIELD_DEF(uint64_t, lastRows);
END_TILING_DATA_DEF;

REGISTER_TILING_DATA_CLASS(MfdsSparseMlaAttention, MfdsSparseAttentionTilingData)
REGISTER_TILING_DATA_CLASS(MfdsSparseMlaAttentionGrad, MfdsSparseAttentionTilingData)
}  // namespace optiling
