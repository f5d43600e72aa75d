// MfdsHcSinkhorn / MfdsHcSinkhornGrad: host side. Tiling: the R matrices [n, n] of comb split
// over AI cores as rows of n*n elements; a UB tile holds `tileRows` matrices (a multiple of 8:
// one matrix per lane of the lane-major planes, 32-byte aligned); aux0 = n. The iteration count
// is a device tensor (params), so the backward's tile is sized for kSinkhornMaxIters.
#include "../../common/op_def_common.h"
#include "../../common/sinkhorn_limits.h"
#include "../../common/tiling_common.h"
#include "mfds_hc_sinkhorn_tiling.h"

namespace optiling {
static ge::graphStatus SinkhornTiling(gert::TilingContext *ctx, bool grad) {
  const gert::Shape &c = ctx->GetInputShape(0)->GetStorageShape();
  const size_t dims = c.GetDimNum();
  const uint64_t n = dims >= 2 ? mfds_tiling::LastDim(c) : 0;
  if (n == 0 || static_cast<uint64_t>(c.GetDim(dims - 2)) != n) return ge::GRAPH_FAILED;   // [.., n, n]
  const uint64_t nn = n * n, nnPad = mfds_tiling::AlignUp(nn, 8);
  const uint64_t rows = mfds_tiling::Numel(c) / nn;
  const uint64_t steps = 2 * mfds::kSinkhornMaxIters - 1;
  // UB bytes per matrix: the double-buffered row queues (comb, and for the grad dout and dcomb),
  // the lane-major planes (the grad: every step's planes and denominators, its gradient, two
  // scratch planes) and the two Gather offset tables
  const uint64_t queues = (grad ? 3 : 2) * mfds_tiling::kBufferNum * nnPad * sizeof(float);
  const uint64_t planes = (grad ? steps * (nn + n) + nn + 2 : nn + n) * sizeof(float);
  const uint64_t offsets = (nn + nnPad) * sizeof(uint32_t);
  MfdsRowTilingData t;
  auto s = mfds_tiling::FillRows(ctx, t, rows, nn, queues + planes + offsets, 8 * (queues + planes + offsets) + 1024);
  t.set_tileRows(std::max<uint32_t>(8, s.tileRows / 8 * 8));   // the 8 lanes the fixed bytes reserve at least
  t.set_aux0(static_cast<uint32_t>(n));
  mfds_tiling::SaveTiling(ctx, t, s.cores);
  return ge::GRAPH_SUCCESS;
}
static ge::graphStatus TilingFwd(gert::TilingContext *ctx) { return SinkhornTiling(ctx, false); }
static ge::graphStatus TilingGrad(gert::TilingContext *ctx) { return SinkhornTiling(ctx, true); }
}  // namespace optiling

namespace ge {
static ge::graphStatus InferShape(gert::InferShapeContext *ctx) {
  *ctx->GetOutputShape(0) = *ctx->GetInputShape(0);   // out / dcomb: comb's shape
  return GRAPH_SUCCESS;
}
static ge::graphStatus InferType(gert::InferDataTypeContext *ctx) {
  ctx->SetOutputDataType(0, ge::DT_FLOAT);
  return GRAPH_SUCCESS;
}
}  // namespace ge

namespace ops {
class MfdsHcSinkhorn : public OpDef {
 public:
  explicit MfdsHcSinkhorn(const char *name) : OpDef(name) {
    this->Input("comb").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Input("params").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Output("out").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->SetInferShape(ge::InferShape).SetInferDataType(ge::InferType);
    this->AICore().SetTiling(optiling::TilingFwd);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsHcSinkhorn);

class MfdsHcSinkhornGrad : public OpDef {
 public:
  explicit MfdsHcSinkhornGrad(const char *name) : OpDef(name) {
    this->Input("comb").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Input("dout").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Input("params").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->Output("dcomb").ParamType(REQUIRED).DataType({ge::DT_FLOAT}).Format({ge::FORMAT_ND});
    this->SetInferShape(ge::InferShape).SetInferDataType(ge::InferType);
    this->AICore().SetTiling(optiling::TilingGrad);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsHcSinkhornGrad);
}  // namespace ops
