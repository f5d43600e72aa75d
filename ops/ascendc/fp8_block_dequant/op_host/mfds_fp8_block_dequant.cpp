// MfdsFp8BlockDequant host side: rows of codes [O, I] over AI cores; aux0 = scale columns.
#include "../../common/op_def_common.h"
#include "../../common/tiling_common.h"
#include "mfds_fp8_block_dequant_tiling.h"

namespace optiling {
static ge::graphStatus Tiling(gert::TilingContext *ctx) {
  const gert::Shape &c = ctx->GetInputShape(0)->GetStorageShape();
  const gert::Shape &s = ctx->GetInputShape(1)->GetStorageShape();
  const uint64_t rows = c.GetDim(0), cols = c.GetDim(1);
  if (s.GetDim(0) != (rows + 127) / 128 || s.GetDim(1) != (cols + 127) / 128) return ge::GRAPH_FAILED;
  const uint64_t pad = mfds_tiling::AlignUp(cols, 32);
  // codes queue (u8) + out queue (f32), double buffered, + half/int32/offset work buffers
  const uint64_t perRow = pad * (1 * 2 + 4 * 2) + pad * (2 + 4 + 4);
  MfdsRowTilingData t;
  auto split = mfds_tiling::FillRows(ctx, t, rows, cols, perRow, 256 * 4 + mfds_tiling::AlignUp(s.GetDim(1), 8) * 4);
  t.set_aux0(static_cast<uint32_t>(s.GetDim(1)));
  mfds_tiling::SaveTiling(ctx, t, split.cores);
  return ge::GRAPH_SUCCESS;
}
}  // namespace optiling

namespace ge {
static ge::graphStatus InferShape(gert::InferShapeContext *ctx) {
  *ctx->GetOutputShape(0) = *ctx->GetInputShape(0);
  return GRAPH_SUCCESS;
}
static ge::graphStatus InferType(gert::InferDataTypeContext *ctx) {
  ctx->SetOutputDataType(0, ge::DT_FLOAT);
  return GRAPH_SUCCESS;
}
}  // namespace ge

namespace ops {
class MfdsFp8BlockDequant : public OpDef {
 public:
  explicit MfdsFp8BlockDequant(const char *name) : OpDef(name) {
    this->Input("codes").ParamType(REQUIRED).DataType({ge::DT_UINT8}).Format({ge::FORMAT_ND});
    this->Input("scale").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Output("out").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->SetInferShape(ge::InferShape).SetInferDataType(ge::InferType);
    this->AICore().SetTiling(optiling::Tiling);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsFp8BlockDequant);
}  // namespace ops
