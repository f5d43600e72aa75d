#pragma once
#include "../../common/row_tiling_data.h"

namespace optiling {
REGISTER_TILING_DATA_CLASS(MfdsMoePermute, MfdsRowTilingData)
REGISTER_TILING_DATA_CLASS(MfdsMoePermuteGrad, MfdsRowTilingData)
}  // namespace optiling
