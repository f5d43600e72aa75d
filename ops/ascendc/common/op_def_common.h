// Type/format lists shared by the OpDef registrations (fp16, bf16 and fp32 variants, ND).
#pragma once
#include "register/op_def_registry.h"

#define MFDS_FLOAT_TYPES {ge::DT_FLOAT16, ge::DT_BF16, ge::DT_FLOAT}
#define MFDS_F32_TYPES {ge::DT_FLOAT, ge::DT_FLOAT, ge::DT_FLOAT}
#define MFDS_I32_TYPES {ge::DT_INT32, ge::DT_INT32, ge::DT_INT32}
#define MFDS_ND {ge::FORMAT_ND, ge::FORMAT_ND, ge::FORMAT_ND}
#define MFDS_CONFIGS(op)                        \
  (op)->AICore().AddConfig("ascend910b");       \
  (op)->AICore().AddConfig("ascend910_93")
