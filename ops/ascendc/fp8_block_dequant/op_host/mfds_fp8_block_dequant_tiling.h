#pragma once
#include "../../common/row_tiling_data.h"

namespace optiling {
REGISTER_TILING_DATA_CLASS(MfdsFp8BlockDequant, MfdsRowTilingData)
}  // namespace optiling
