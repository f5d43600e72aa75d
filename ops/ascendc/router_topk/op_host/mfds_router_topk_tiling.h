#pragma once
#include "../../common/row_tiling_data.h"

namespace optiling {
REGISTER_TILING_DATA_CLASS(MfdsRouterTopk, MfdsRowTilingData)
REGISTER_TILING_DATA_CLASS(MfdsRouterTopkGrad, MfdsRowTilingData)
}  // namespace optiling
