// MfdsSparseMlaAttention / MfdsSparseMlaAttentionGrad host side. Each (batch, head, query) row is
// one unit of work: its k chosen keys are gathered from GM in tiles of `keyTile` rows, as many as
// the unified buffer holds next to the row's own buffers. The backward scatters into the chosen
// keys' rows from every core with atomic adds, so it accumulates dkv and dk_pe in a float32
// workspace (zeroed and cast by the kernel) whatever the op's dtype.
#include "../../common/op_def_common.h"
#include "../../common/tiling_common.h"
#include "mfds_sparse_mla_attention_tiling.h"

namespace optiling {
// grad: inputs are shifted by one (dout first)
static ge::graphStatus TilingOf(gert::TilingContext *ctx, size_t first, bool grad) {
  const gert::Shape &q = ctx->GetInputShape(first + 0)->GetStorageShape();      // [B, Sq, H, Dn+Dr]
  const gert::Shape &qpe = ctx->GetInputShape(first + 1)->GetStorageShape();    // [B, H, Sq, Dr]
  const gert::Shape &kv = ctx->GetInputShape(first + 2)->GetStorageShape();     // [B, Sk, H, Dn+Dv]
  const gert::Shape &index = ctx->GetInputShape(first + 4)->GetStorageShape();  // [B, Sq, K]
  const uint64_t b = q.GetDim(0), sq = q.GetDim(1), h = q.GetDim(2), dr = qpe.GetDim(3);
  const uint64_t dn = q.GetDim(3) - dr, sk = kv.GetDim(1), dv = kv.GetDim(3) - dn, k = index.GetDim(2);
  if (dn == 0 || dv == 0 || k == 0) return ge::GRAPH_FAILED;
  const uint64_t padN = mfds_tiling::AlignUp(dn, 8), padR = mfds_tiling::AlignUp(dr, 8);
  const uint64_t padV = mfds_tiling::AlignUp(dv, 8), padK = mfds_tiling::AlignUp(k, 8);
  // per gathered key: raw rows (up to 4 bytes each) and their float32 copies, its score and index
  const uint64_t perKey = (padN + padV + padR) * (4 + 4) + 4 * 4;
  // per row: q_nope, q_pe, the accumulators, dout/out (grad), the row's index, bias and scores,
  // reduction scratch; the grad's workspace chunk and its cast buffer (2048 floats each)
  const uint64_t fixed = (padN + padR) * 4 * 4 + padV * 4 * 6 + padK * 4 * 3 + 4096 + (grad ? 2 * 2048 * 4 : 0);
  MfdsSparseAttentionTilingData t;
  mfds_tiling::RowSplit s = mfds_tiling::SplitRows(ctx, b * h * sq, 1, 0);
  auto platform = platform_ascendc::PlatformAscendC(ctx->GetPlatformInfo());
  uint64_t ub = 0;
  platform.GetCoreMemSize(platform_ascendc::CoreMemType::UB, ub);
  const uint64_t fit = ub > fixed ? (ub - fixed) / perKey : 0;
  const uint64_t tile = std::max<uint64_t>(8, std::min<uint64_t>(padK, fit / 8 * 8));
  t.set_b(b);
  t.set_sq(sq);
  t.set_sk(sk);
  t.set_h(h);
  t.set_dn(dn);
  t.set_dr(dr);
  t.set_dv(dv);
  t.set_k(k);
  t.set_keyTile(static_cast<uint32_t>(tile));
  t.set_cores(s.cores);
  t.set_rowsPerCore(s.rowsPerCore);
  t.set_lastRows(s.lastRows);
  const size_t workspace = grad ? (b * sk * h * (dn + dv) + b * sk * dr) * sizeof(float) : 0;
  mfds_tiling::SaveTiling(ctx, t, s.cores, workspace);
  return ge::GRAPH_SUCCESS;
}

static ge::graphStatus Tiling(gert::TilingContext *ctx) { return TilingOf(ctx, 0, false); }
static ge::graphStatus TilingGrad(gert::TilingContext *ctx) { return TilingOf(ctx, 1, true); }
}  // namespace optiling

namespace ge {
static ge::graphStatus InferFwd(gert::InferShapeContext *ctx) {
  const gert::Shape *q = ctx->GetInputShape(0), *qpe = ctx->GetInputShape(1), *kv = ctx->GetInputShape(2);
  const int64_t dn = q->GetDim(3) - qpe->GetDim(3);
  gert::Shape *out = ctx->GetOutputShape(0), *stats = ctx->GetOutputShape(1);
  *out = *q;
  out->SetDim(3, kv->GetDim(3) - dn);                                  // [B, Sq, H, Dv]
  *stats = *qpe;
  stats->SetDim(3, 2);                                                 // [B, H, Sq, 2]
  return GRAPH_SUCCESS;
}
static ge::graphStatus InferGrad(gert::InferShapeContext *ctx) {
  for (size_t i = 0; i < 4; ++i) *ctx->GetOutputShape(i) = *ctx->GetInputShape(i + 1);  // dq..dk_pe
  return GRAPH_SUCCESS;
}
static ge::graphStatus FwdType(gert::InferDataTypeContext *ctx) {
  ctx->SetOutputDataType(0, ctx->GetInputDataType(0));
  ctx->SetOutputDataType(1, ge::DT_FLOAT);
  return GRAPH_SUCCESS;
}
static ge::graphStatus GradType(gert::InferDataTypeContext *ctx) {
  for (size_t i = 0; i < 4; ++i) ctx->SetOutputDataType(i, ctx->GetInputDataType(0));
  return GRAPH_SUCCESS;
}
}  // namespace ge

// the inputs both ops read, in the CPU kernel's order
#define MFDS_SPARSE_MLA_INPUTS(op)                                                              \
  (op)->Input("q").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);              \
  (op)->Input("q_pe").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);           \
  (op)->Input("kv").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);             \
  (op)->Input("k_pe").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);           \
  (op)->Input("index").ParamType(REQUIRED).DataType(MFDS_I32_TYPES).Format(MFDS_ND);            \
  (op)->Input("bias").ParamType(REQUIRED).DataType(MFDS_F32_TYPES).Format(MFDS_ND);             \
  (op)->Input("scale").ParamType(REQUIRED).DataType(MFDS_F32_TYPES).Format(MFDS_ND)

namespace ops {
class MfdsSparseMlaAttention : public OpDef {
 public:
  explicit MfdsSparseMlaAttention(const char *name) : OpDef(name) {
    MFDS_SPARSE_MLA_INPUTS(this);
    this->Output("out").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Output("stats").ParamType(REQUIRED).DataType(MFDS_F32_TYPES).Format(MFDS_ND);
    this->SetInferShape(ge::InferFwd).SetInferDataType(ge::FwdType);
    this->AICore().SetTiling(optiling::Tiling);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsSparseMlaAttention);

class MfdsSparseMlaAttentionGrad : public OpDef {
 public:
  explicit MfdsSparseMlaAttentionGrad(const char *name) : OpDef(name) {
    this->Input("dout").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    MFDS_SPARSE_MLA_INPUTS(this);
    this->Input("out").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Input("stats").ParamType(REQUIRED).DataType(MFDS_F32_TYPES).Format(MFDS_ND);
    this->Output("dq").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Output("dq_pe").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Output("dkv").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->Output("dk_pe").ParamType(REQUIRED).DataType(MFDS_FLOAT_TYPES).Format(MFDS_ND);
    this->SetInferShape(ge::InferGrad).SetInferDataType(ge::GradType);
    this->AICore().SetTiling(optiling::TilingGrad);
    MFDS_CONFIGS(this);
  }
};
OP_ADD(MfdsSparseMlaAttentionGrad);
}  // namespace ops
