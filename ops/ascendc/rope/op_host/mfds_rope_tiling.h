#pragma once
#include "../../common/row_tiling_data.h"

namespace optiling {
REGISTER_TILING_DATA_CLASS(MfdsRope, MfdsRowTilingData)
REGISTER_TILING_DATA_CLASS(MfdsRopeGrad, MfdsRowTilingData)
}  // namespace optiling
