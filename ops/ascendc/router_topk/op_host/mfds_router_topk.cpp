// MfdsRouterTopk / MfdsRouterTopkGrad host side: tokens (rows of logits [N, E]) over AI cores.
// top_k comes from the params tensor at run time; shape inference takes it from the weights
// output the framework infers (MindSpore passes out_shape).
#include "../../common/op_def_common.h"
#include "../../common/tiling_common.h"
#include "mfds_router_topk_tiling.h"

namespace optiling {
static ge::graphStatus Tiling(gert::TilingContext *ctx) {
  const gert::Shape &l = ctx->GetInputShape(0)->GetStorageShape();
  const uint64_t e = l.GetDim(1), pad = mfds_tiling::AlignUp(e, 8);
  const uint64_t perRow = pad * 4 * (2 * 2 + 2 * 2 + 4);
  MfdsRowTilingData t;
  auto s = mfds_tiling::FillRows(ctx, t, l.GetDim(0), e, perRow, pad * 4 * 4 + 64);
  mfds_tiling::SaveTiling(ctx, t, s.cores);
  return ge::GRAPH_SUCCESS;
}
}  // namespace optiling

namespace ops {
class MfdsRouterTopk : public OpDef {
 public:
  explicit MfdsRouterTopk(const char *name) : OpDef(name) {
    this->Input("logits").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Input("bias").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Input("params").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Output("weights").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Output("indices").ParamType(REQUIRED).DataType({ge::DT_INT32}).Format({ge::FORMAT_ND});
    this->Output("scores").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->AICore().SetTiling(optiling::Tiling);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsRouterTopk);

class MfdsRouterTopkGrad : public OpDef {
 public:
  explicit MfdsRouterTopkGrad(const char *name) : OpDef(name) {
    this->Input("logits").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Input("scores").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Input("indices").ParamType(REQUIRED).DataType({ge::DT_INT32}).Format({ge::FORMAT_ND});
    this->Input("dweights").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Input("dscores").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Input("params").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Output("dlogits").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Output("dbias").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->AICore().SetTiling(optiling::Tiling);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsRouterTopkGrad);
}  // namespace ops
