// MfdsRmsNorm / MfdsRmsNormGrad: host side (tiling, shape inference, registration).
// Tiling: rows (all dims but the last) split over AI cores; every core streams its rows in
// UB tiles of `tileRows` rows, double buffered, each row padded to 32 bytes.
#include "../../common/op_def_common.h"
#include "../../common/tiling_common.h"
#include "mfds_rms_norm_tiling.h"

namespace optiling {
static ge::graphStatus RowTiling(gert::TilingContext *ctx, uint32_t bytesPerElemAllBuffers, bool gradPartials) {
  const gert::Shape &x = ctx->GetInputShape(gradPartials ? 1 : 0)->GetStorageShape();
  const uint64_t cols = mfds_tiling::LastDim(x);
  const uint64_t rows = mfds_tiling::Numel(x) / std::max<uint64_t>(cols, 1);
  const uint64_t colsPad = mfds_tiling::AlignUp(cols, 8);
  // per row: the double-buffered queues plus float32 working copies
  const uint64_t perRow = colsPad * bytesPerElemAllBuffers + 64;
  const uint64_t fixed = colsPad * 4 * 3;  // gamma (float) and, for the grad, the dgamma accumulator
  MfdsRowTilingData t;
  auto s = mfds_tiling::FillRows(ctx, t, rows, cols, perRow, fixed);
  // the grad writes one float32 dgamma partial per core to workspace, reduced by core 0
  mfds_tiling::SaveTiling(ctx, t, s.cores, gradPartials ? s.cores * colsPad * sizeof(float) : 0);
  return ge::GRAPH_SUCCESS;
}
static ge::graphStatus TilingFwd(gert::TilingContext *ctx) { return RowTiling(ctx, 4 * (2 + 2) + 8, false); }
static ge::graphStatus TilingGrad(gert::TilingContext *ctx) { return RowTiling(ctx, 4 * (3 + 3) + 12, true); }
}  // namespace optiling

namespace ge {
static ge::graphStatus InferFwd(gert::InferShapeContext *ctx) {
  const gert::Shape *x = ctx->GetInputShape(0);
  *ctx->GetOutputShape(0) = *x;
  gert::Shape *rstd = ctx->GetOutputShape(1);
  rstd->SetDimNum(x->GetDimNum() - 1);
  for (size_t i = 0; i + 1 < x->GetDimNum(); ++i) rstd->SetDim(i, x->GetDim(i));
  return GRAPH_SUCCESS;
}
static ge::graphStatus InferGrad(gert::InferShapeContext *ctx) {
  *ctx->GetOutputShape(0) = *ctx->GetInputShape(1);
  *ctx->GetOutputShape(1) = *ctx->GetInputShape(2);
  return GRAPH_SUCCESS;
}
static ge::graphStatus TypeFwd(gert::InferDataTypeContext *ctx) {
  ctx->SetOutputDataType(0, ctx->GetInputDataType(0));
  ctx->SetOutputDataType(1, ge::DT_FLOAT);
  return GRAPH_SUCCESS;
}
static ge::graphStatus TypeGrad(gert::InferDataTypeContext *ctx) {
  ctx->SetOutputDataType(0, ctx->GetInputDataType(1));
  ctx->SetOutputDataType(1, ctx->GetInputDataType(2));
  return GRAPH_SUCCESS;
}
}  // namespace ge

namespace ops {
class MfdsRmsNorm : public OpDef {
 public:
  explicit MfdsRmsNorm(const char *name) : OpDef(name) {
    this->Input("x").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("gamma").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("eps").ParamType(REQUIRED).DataType(MFDS_F32_TYPES).Format(MFDS_ND);
    this->Output("y").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Output("rstd").ParamType(REQUIRED).DataType(MFDS_F32_TYPES).Format(MFDS_ND);
    this->SetInferShape(ge::InferFwd).SetInferDataType(ge::TypeFwd);
    this->AICore().SetTiling(optiling::TilingFwd);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsRmsNorm);

class MfdsRmsNormGrad : public OpDef {
 public:
  explicit MfdsRmsNormGrad(const char *name) : OpDef(name) {
    this->Input("dy").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("x").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("gamma").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("rstd").ParamType(REQUIRED).DataType(MFDS_F32_TYPES).Format(MFDS_ND);
    this->Output("dx").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Output("dgamma").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->SetInferShape(ge::InferGrad).SetInferDataType(ge::TypeGrad);
    this->AICore().SetTiling(optiling::TilingGrad);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsRmsNormGrad);
}  // namespace ops
