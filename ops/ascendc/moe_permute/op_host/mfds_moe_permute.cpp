// MfdsMoePermute / MfdsMoePermuteGrad host side.
// Permute: output rows (T = N*k) over AI cores; aux0 = k, aux1 = experts (from the counts output).
// Grad: tokens (N) over AI cores; aux0 = k, aux1 = P (rows of dx_perm).
#include "../../common/op_def_common.h"
#include "../../common/tiling_common.h"
#include "mfds_moe_permute_tiling.h"

namespace optiling {
static ge::graphStatus TilingFwd(gert::TilingContext *ctx) {
  const gert::Shape &x = ctx->GetInputShape(0)->GetStorageShape();
  const gert::Shape &idx = ctx->GetInputShape(1)->GetStorageShape();
  const gert::Shape &counts = ctx->GetOutputShape(3)->GetStorageShape();
  const uint64_t h = x.GetDim(1), k = idx.GetDim(1), pad = mfds_tiling::AlignUp(h, 8);
  MfdsRowTilingData t;
  // rows stream through one double-buffered queue; slot/expert of the core's rows, idx chunks, counts
  auto s = mfds_tiling::FillRows(ctx, t, x.GetDim(0) * k, h, pad * 4 * 2 + 8, 2048 * 4 + counts.GetDim(0) * 8);
  t.set_aux0(static_cast<uint32_t>(k));
  t.set_aux1(static_cast<uint32_t>(counts.GetDim(0)));
  mfds_tiling::SaveTiling(ctx, t, s.cores);
  return ge::GRAPH_SUCCESS;
}
static ge::graphStatus TilingGrad(gert::TilingContext *ctx) {
  const gert::Shape &d = ctx->GetInputShape(0)->GetStorageShape();
  const gert::Shape &idx = ctx->GetInputShape(2)->GetStorageShape();
  const uint64_t h = d.GetDim(1), k = idx.GetDim(1), pad = mfds_tiling::AlignUp(h, 8);
  MfdsRowTilingData t;
  auto s = mfds_tiling::FillRows(ctx, t, idx.GetDim(0), h, pad * 4 * 4 + k * 4, 2048 * 4);
  t.set_aux0(static_cast<uint32_t>(k));
  t.set_aux1(static_cast<uint32_t>(d.GetDim(0)));
  mfds_tiling::SaveTiling(ctx, t, s.cores);
  return ge::GRAPH_SUCCESS;
}
}  // namespace optiling

namespace ops {
class MfdsMoePermute : public OpDef {
 public:
  explicit MfdsMoePermute(const char *name) : OpDef(name) {
    this->Input("x").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("expert_idx").ParamType(REQUIRED).DataType(MFDS_I32_TYPES).Format(MFDS_ND);
    this->Output("x_perm").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Output("slot").ParamType(REQUIRED).DataType(MFDS_I32_TYPES).Format(MFDS_ND);
    this->Output("row_expert").ParamType(REQUIRED).DataType(MFDS_I32_TYPES).Format(MFDS_ND);
    this->Output("counts").ParamType(REQUIRED).DataType(MFDS_I32_TYPES).Format(MFDS_ND);
    this->AICore().SetTiling(optiling::TilingFwd);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsMoePermute);

class MfdsMoePermuteGrad : public OpDef {
 public:
  explicit MfdsMoePermuteGrad(const char *name) : OpDef(name) {
    this->Input("dx_perm").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("slot").ParamType(REQUIRED).DataType(MFDS_I32_TYPES).Format(MFDS_ND);
    this->Input("expert_idx").ParamType(REQUIRED).DataType(MFDS_I32_TYPES).Format(MFDS_ND);
    this->Output("dx").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->AICore().SetTiling(optiling::TilingGrad);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsMoePermuteGrad);
}  // namespace ops
