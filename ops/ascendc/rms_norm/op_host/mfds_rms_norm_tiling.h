#pragma once
#include "../../common/row_tiling_data.h"

namespace optiling {
REGISTER_TILING_DATA_CLASS(MfdsRmsNorm, MfdsRowTilingData)
REGISTER_TILING_DATA_CLASS(MfdsRmsNormGrad, MfdsRowTilingData)
}  // namespace optiling
