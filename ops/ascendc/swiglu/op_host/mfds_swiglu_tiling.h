#pragma once
#include "../../common/row_tiling_data.h"

namespace optiling {
REGISTER_TILING_DATA_CLASS(MfdsSwiglu, MfdsRowTilingData)
REGISTER_TILING_DATA_CLASS(MfdsSwigluGrad, MfdsRowTilingData)
}  // namespace optiling
