// MfdsGroupedMatmul / MfdsGroupedMatmulGrad host side. Group sizes are data (block_expert), so
// the cube tiling is computed for the largest possible group (all rows) and each group sets its
// own single-core shape at run time; whole groups go to cores round-robin.
#include "../../common/op_def_common.h"
#include "../../common/tiling_common.h"
#include "mfds_grouped_matmul_tiling.h"

namespace optiling {
static matmul_tiling::DataType MmType(ge::DataType t) {
  return t == ge::DT_FLOAT16 ? matmul_tiling::DataType::DT_FLOAT16
         : t == ge::DT_BF16  ? matmul_tiling::DataType::DT_BF16
                             : matmul_tiling::DataType::DT_FLOAT;
}

static bool CubeTiling(gert::TilingContext *ctx, TCubeTiling &out, int64_t m, int64_t n, int64_t k, bool transA,
                       bool transB, ge::DataType dtype) {
  auto platform = platform_ascendc::PlatformAscendC(ctx->GetPlatformInfo());
  matmul_tiling::MatmulApiTiling t(platform);
  const auto mt = MmType(dtype);
  t.SetAType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, mt, transA);
  t.SetBType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, mt, transB);
  t.SetCType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, mt);
  t.SetShape(m, n, k);
  t.SetOrgShape(m, n, k);
  t.SetBias(false);
  t.SetBufferSpace(-1, -1, -1);
  return t.GetTiling(out) != -1;
}

static ge::graphStatus Tiling(gert::TilingContext *ctx, bool grad) {
  const gert::Shape &x = ctx->GetInputShape(grad ? 1 : 0)->GetStorageShape();
  const gert::Shape &w = ctx->GetInputShape(grad ? 2 : 1)->GetStorageShape();
  const gert::Shape &be = ctx->GetInputShape(grad ? 3 : 2)->GetStorageShape();
  const ge::DataType dtype = ctx->GetInputDesc(0)->GetDataType();
  MfdsGroupedMatmulTilingData t;
  const int64_t p = x.GetDim(0), k = x.GetDim(1), e = w.GetDim(0), m = w.GetDim(1);
  t.set_rows(p);
  t.set_k(k);
  t.set_m(m);
  t.set_experts(e);
  t.set_blocks(be.GetDim(0));
  auto platform = platform_ascendc::PlatformAscendC(ctx->GetPlatformInfo());
  const uint32_t cores = static_cast<uint32_t>(std::max<int64_t>(1, std::min<int64_t>(platform.GetCoreNumAic(), e)));
  t.set_cores(cores);
  // forward: Y[P, M] = X[P, K] W_e^T; backward: dX[P, K] = dY[P, M] W_e, dW_e[M, K] = dY^T X
  if (!CubeTiling(ctx, t.mm, p, grad ? k : m, grad ? m : k, false, !grad, dtype)) return ge::GRAPH_FAILED;
  if (grad && !CubeTiling(ctx, t.mmW, m, k, p, true, false, dtype)) return ge::GRAPH_FAILED;
  mfds_tiling::SaveTiling(ctx, t, cores);
  return ge::GRAPH_SUCCESS;
}
static ge::graphStatus TilingFwd(gert::TilingContext *ctx) { return Tiling(ctx, false); }
static ge::graphStatus TilingGrad(gert::TilingContext *ctx) { return Tiling(ctx, true); }
}  // namespace optiling

namespace ops {
class MfdsGroupedMatmul : public OpDef {
 public:
  explicit MfdsGroupedMatmul(const char *name) : OpDef(name) {
    this->Input("x").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("weight").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("block_expert").ParamType(REQUIRED).DataType(MFDS_I32_TYPES).Format(MFDS_ND);
    this->Output("y").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->AICore().SetTiling(optiling::TilingFwd);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsGroupedMatmul);

class MfdsGroupedMatmulGrad : public OpDef {
 public:
  explicit MfdsGroupedMatmulGrad(const char *name) : OpDef(name) {
    this->Input("dy").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("x").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("weight").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("block_expert").ParamType(REQUIRED).DataType(MFDS_I32_TYPES).Format(MFDS_ND);
    this->Output("dx").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Output("dweight").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->AICore().SetTiling(optiling::TilingGrad);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsGroupedMatmulGrad);
}  // namespace ops
