// MfdsRope / MfdsRopeGrad host side: rows (b, h, s) of x [B, H, S, D] over AI cores; aux0 = H,
// aux1 = S, aux2 = batch of cos/sin (B, or 1 when shared by the batch).
#include "../../common/op_def_common.h"
#include "../../common/tiling_common.h"
#include "mfds_rope_tiling.h"

namespace optiling {
static ge::graphStatus Tiling(gert::TilingContext *ctx) {
  const gert::Shape &x = ctx->GetInputShape(0)->GetStorageShape();
  const gert::Shape &c = ctx->GetInputShape(1)->GetStorageShape();
  if (x.GetDimNum() != 4 || c.GetDimNum() != 4 || c.GetDim(3) * 2 != x.GetDim(3)) return ge::GRAPH_FAILED;
  const uint64_t d = x.GetDim(3), pad = mfds_tiling::AlignUp(d, 8);
  const uint64_t perRow = pad * (4 * 2 * 2 + 4 * 2 * 2) + pad * 4 * 6;  // x/y queues + cos/sin rows + work
  MfdsRowTilingData t;
  auto s = mfds_tiling::FillRows(ctx, t, x.GetDim(0) * x.GetDim(1) * x.GetDim(2), d, perRow, pad * 4 * 2);
  t.set_aux0(static_cast<uint32_t>(x.GetDim(1)));
  t.set_aux1(static_cast<uint32_t>(x.GetDim(2)));
  t.set_aux2(static_cast<uint32_t>(c.GetDim(0)));
  mfds_tiling::SaveTiling(ctx, t, s.cores);
  return ge::GRAPH_SUCCESS;
}
}  // namespace optiling

namespace ge {
static ge::graphStatus SameShape(gert::InferShapeContext *ctx) {
  *ctx->GetOutputShape(0) = *ctx->GetInputShape(0);
  return GRAPH_SUCCESS;
}
static ge::graphStatus SameType(gert::InferDataTypeContext *ctx) {
  ctx->SetOutputDataType(0, ctx->GetInputDataType(0));
  return GRAPH_SUCCESS;
}
}  // namespace ge

namespace ops {
#define MFDS_ROPE_OP(Name, first, out)                                                          \
  class Name : public OpDef {                                                                   \
   public:                                                                                      \
    explicit Name(const char *name) : OpDef(name) {                                             \
      this->Input(first).ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);        \
      this->Input("cos").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);        \
      this->Input("sin").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);        \
      this->Input("mode").ParamType(REQUIRED).DataType(MFDS_F32_TYPES).Format(MFDS_ND);         \
      this->Output(out).ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);         \
      this->SetInferShape(ge::SameShape).SetInferDataType(ge::SameType);                        \
      this->AICore().SetTiling(optiling::Tiling);                                               \
      MFDS_CONFIGS(this);                                                                       \
    }                                                                                           \
  };                                                                                            \
  OP_ADD(Name)
MFDS_ROPE_OP(MfdsRope, "x", "y");
MFDS_ROPE_OP(MfdsRopeGrad, "dy", "dx");
}  // namespace ops
