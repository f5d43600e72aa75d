// MfdsSwiglu / MfdsSwigluGrad host side: rows of the fused [gate; up] input over AI cores.
#include "../../common/op_def_common.h"
#include "../../common/tiling_common.h"
#include "mfds_swiglu_tiling.h"

namespace optiling {
static ge::graphStatus Tiling(gert::TilingContext *ctx) {
  const gert::Shape &gu = ctx->GetInputShape(0)->GetStorageShape();
  const uint64_t cols = mfds_tiling::LastDim(gu), half = mfds_tiling::AlignUp(cols / 2, 8);
  // queues (gate_up in, [dy in], y/dgate_up out), double buffered, plus float32 g, u, s
  const uint64_t perRow = half * (2 * 4 * 2 + 4 * 2 + 2 * 4 * 2) + half * 4 * 4;
  MfdsRowTilingData t;
  auto s = mfds_tiling::FillRows(ctx, t, mfds_tiling::Numel(gu) / cols, cols, perRow, 0);
  mfds_tiling::SaveTiling(ctx, t, s.cores);
  return ge::GRAPH_SUCCESS;
}
}  // namespace optiling

namespace ge {
static ge::graphStatus InferFwd(gert::InferShapeContext *ctx) {
  gert::Shape *y = ctx->GetOutputShape(0);
  *y = *ctx->GetInputShape(0);
  y->SetDim(y->GetDimNum() - 1, y->GetDim(y->GetDimNum() - 1) / 2);
  return GRAPH_SUCCESS;
}
static ge::graphStatus InferGrad(gert::InferShapeContext *ctx) {
  *ctx->GetOutputShape(0) = *ctx->GetInputShape(0);
  return GRAPH_SUCCESS;
}
static ge::graphStatus SameType(gert::InferDataTypeContext *ctx) {
  ctx->SetOutputDataType(0, ctx->GetInputDataType(0));
  return GRAPH_SUCCESS;
}
}  // namespace ge

namespace ops {
class MfdsSwiglu : public OpDef {
 public:
  explicit MfdsSwiglu(const char *name) : OpDef(name) {
    this->Input("gate_up").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Output("y").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->SetInferShape(ge::InferFwd).SetInferDataType(ge::SameType);
    this->AICore().SetTiling(optiling::Tiling);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsSwiglu);

class MfdsSwigluGrad : public OpDef {
 public:
  explicit MfdsSwigluGrad(const char *name) : OpDef(name) {
    this->Input("gate_up").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("dy").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Output("dgate_up").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->SetInferShape(ge::InferGrad).SetInferDataType(ge::SameType);
    this->AICore().SetTiling(optiling::Tiling);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsSwigluGrad);
}  // namespace ops
