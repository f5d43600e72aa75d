#pragma once
#include "../../common/row_tiling_data.h"

namespace optiling {
REGISTER_TILING_DATA_CLASS(MfdsHcSinkhorn, MfdsRowTilingData)
REGISTER_TILING_DATA_CLASS(MfdsHcSinkhornGrad, MfdsRowTilingData)
}  // namespace optiling
