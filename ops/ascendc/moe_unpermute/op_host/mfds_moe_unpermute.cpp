// MfdsMoeUnpermute / MfdsMoeUnpermuteGrad host side.
// Unpermute: tokens (N) over AI cores; aux0 = k, aux1 = P (rows of y_perm).
// Grad: rows (P) of y_perm over AI cores; aux0 = k, aux1 = N.
#include "../../common/op_def_common.h"
#include "../../common/tiling_common.h"
#include "mfds_moe_unpermute_tiling.h"

namespace optiling {
static ge::graphStatus TilingFwd(gert::TilingContext *ctx) {
  const gert::Shape &y = ctx->GetInputShape(0)->GetStorageShape();
  const gert::Shape &w = ctx->GetInputShape(2)->GetStorageShape();
  const uint64_t h = y.GetDim(1), pad = mfds_tiling::AlignUp(h, 8);
  MfdsRowTilingData t;
  auto s = mfds_tiling::FillRows(ctx, t, w.GetDim(0), h, pad * 4 * 4 + w.GetDim(1) * 8, 2048 * 4);
  t.set_aux0(static_cast<uint32_t>(w.GetDim(1)));
  t.set_aux1(static_cast<uint32_t>(y.GetDim(0)));
  mfds_tiling::SaveTiling(ctx, t, s.cores);
  return ge::GRAPH_SUCCESS;
}
static ge::graphStatus TilingGrad(gert::TilingContext *ctx) {
  const gert::Shape &y = ctx->GetInputShape(1)->GetStorageShape();
  const gert::Shape &w = ctx->GetInputShape(3)->GetStorageShape();
  const uint64_t h = y.GetDim(1), pad = mfds_tiling::AlignUp(h, 8);
  MfdsRowTilingData t;
  auto s = mfds_tiling::FillRows(ctx, t, y.GetDim(0), h, pad * 4 * 8 + 8, 0);
  t.set_aux0(static_cast<uint32_t>(w.GetDim(1)));
  t.set_aux1(static_cast<uint32_t>(w.GetDim(0)));
  mfds_tiling::SaveTiling(ctx, t, s.cores);
  return ge::GRAPH_SUCCESS;
}
}  // namespace optiling

namespace ops {
class MfdsMoeUnpermute : public OpDef {
 public:
  explicit MfdsMoeUnpermute(const char *name) : OpDef(name) {
    this->Input("y_perm").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("slot").ParamType(REQUIRED).DataType(MFDS_I32_TYPES).Format(MFDS_ND);
    this->Input("weight").ParamType(REQUIRED).DataType(MFDS_F32_TYPES).Format(MFDS_ND);
    this->Output("out").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->AICore().SetTiling(optiling::TilingFwd);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsMoeUnpermute);

class MfdsMoeUnpermuteGrad : public OpDef {
 public:
  explicit MfdsMoeUnpermuteGrad(const char *name) : OpDef(name) {
    this->Input("dout").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("y_perm").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("slot").ParamType(REQUIRED).DataType(MFDS_I32_TYPES).Format(MFDS_ND);
    this->Input("weight").ParamType(REQUIRED).DataType(MFDS_F32_TYPES).Format(MFDS_ND);
    this->Output("dy_perm").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Output("dweight").ParamType(REQUIRED).DataType(MFDS_F32_TYPES).Format(MFDS_ND);
    this->AICore().SetTiling(optiling::TilingGrad);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsMoeUnpermuteGrad);
}  // namespace ops
