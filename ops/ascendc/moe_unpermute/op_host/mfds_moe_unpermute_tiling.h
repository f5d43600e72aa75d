#pragma once
#include "../../common/row_tiling_data.h"

namespace optiling {
REGISTER_TILING_DATA_CLASS(MfdsMoeUnpermute, MfdsRowTilingData)
REGISTER_TILING_DATA_CLASS(MfdsMoeUnpermuteGrad, MfdsRowTilingData)
}  // namespace optiling
