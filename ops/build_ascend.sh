#!/usr/bin/env bash
# Build and install the custom OPP package (vendor "mfds") holding mindformers_ds' AscendC kernels.
#
#   ops/build_ascend.sh [--soc Ascend910B] [--install-path DIR] [--work DIR]
#   ops/build_ascend.sh --stage-only DIR     # prepare the sources only (no CANN needed)
#
# Steps: merge every ops/ascendc/<op>/<op>.json into one msopgen definition, generate the
# operator project with msopgen, replace its op_host/op_kernel stubs with ours (flattened: the
# shared headers in ops/ascendc/common are copied next to the sources and the includes
# rewritten, because CANN's kernel build copies op_kernel files elsewhere before compiling),
# set the vendor name, run the project's build.sh and install the resulting .run package.
# Afterwards export the printed ASCEND_CUSTOM_OPP_PATH; mindformers_ds registers the kernels
# (mindformers_ds/ops/ascend_reg.py) only when that path names the "mfds" vendor.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/ascendc"
SOC="Ascend910B"
INSTALL="${MFDS_OPP_INSTALL:-$HOME/.cache/mindformers_ds/opp}"
WORK=""
STAGE_ONLY=""

die() { echo "build_ascend.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --soc) SOC="$2"; shift 2 ;;
    --install-path) INSTALL="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --stage-only) STAGE_ONLY="$2"; shift 2 ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) die "unknown argument '$1' (expected --soc, --install-path, --work or --stage-only)" ;;
  esac
done

# stage DIR: DIR/mfds_ops.json plus flattened DIR/op_host and DIR/op_kernel
stage() {
  local out="$1"
  mkdir -p "$out/op_host" "$out/op_kernel"
  python3 - "$SRC" "$out/mfds_ops.json" <<'PY'
import glob, json, os, sys
src, dst = sys.argv[1], sys.argv[2]
merged = []
for path in sorted(glob.glob(os.path.join(src, "*", "*.json"))):
    with open(path) as f:
        merged.extend(json.load(f))
names = [d["op"] for d in merged]
if len(set(names)) != len(names):
    sys.exit(f"{src}: duplicate op names in the JSON definitions: {names}")
tmp = dst + ".tmp"
with open(tmp, "w") as f:
    json.dump(merged, f, indent=1)
os.replace(tmp, dst)
print(f"merged {len(merged)} op definitions into {dst}")
PY
  local op part f
  for op in "$SRC"/*/; do
    [ "$(basename "$op")" = common ] && continue
    for part in op_host op_kernel; do
      [ -d "$op/$part" ] || die "$op: missing $part/"
      for f in "$op/$part"/*; do
        sed -e 's#"\.\./\.\./common/\([A-Za-z0-9_]*\.h\)"#"\1"#' "$f" > "$out/$part/$(basename "$f")"
      done
    done
  done
  cp "$SRC"/common/*.h "$out/op_host/"
  cp "$SRC"/common/*.h "$out/op_kernel/"
  if grep -rq '\.\./\.\./common' "$out/op_host" "$out/op_kernel"; then
    die "an include of ../../common was not rewritten in $out"
  fi
}

if [ -n "$STAGE_ONLY" ]; then
  stage "$STAGE_ONLY"
  echo "staged sources in $STAGE_ONLY"
  exit 0
fi

CANN="${ASCEND_HOME_PATH:-${ASCEND_TOOLKIT_HOME:-}}"
[ -n "$CANN" ] && [ -d "$CANN" ] || die "CANN toolkit not found: source <cann>/set_env.sh first (ASCEND_HOME_PATH is unset)"
command -v msopgen >/dev/null || die "msopgen not in PATH (it ships with the CANN toolkit: $CANN/python/site-packages/bin)"

WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/mfds_opp.XXXXXX")}"
stage "$WORK/stage"
rm -rf "$WORK/project"
msopgen gen -i "$WORK/stage/mfds_ops.json" -c "ai_core-$SOC" -lan cpp -out "$WORK/project"
# our sources replace the generated stubs (same file names: msopgen snake-cases the op names)
rm -f "$WORK/project/op_host/"*.cpp "$WORK/project/op_host/"*.h "$WORK/project/op_kernel/"*.cpp
cp "$WORK/stage/op_host/"* "$WORK/project/op_host/"
cp "$WORK/stage/op_kernel/"* "$WORK/project/op_kernel/"

python3 - "$WORK/project/CMakePresets.json" "$CANN" <<'PY'
import json, os, sys
path, cann = sys.argv[1], sys.argv[2]
with open(path) as f:
    presets = json.load(f)
for preset in presets.get("configurePresets", []):
    cache = preset.get("cacheVariables", {})
    if "vendor_name" in cache:
        cache["vendor_name"]["value"] = "mfds"
    if "ASCEND_CANN_PACKAGE_PATH" in cache:
        cache["ASCEND_CANN_PACKAGE_PATH"]["value"] = cann
with open(path + ".tmp", "w") as f:
    json.dump(presets, f, indent=2)
os.replace(path + ".tmp", path)
PY

(cd "$WORK/project" && bash build.sh)
RUN="$(ls "$WORK"/project/build_out/custom_opp_*.run 2>/dev/null | head -n 1)"
[ -n "$RUN" ] || die "the build produced no custom_opp_*.run in $WORK/project/build_out"
mkdir -p "$INSTALL"
"$RUN" --install-path="$INSTALL"
[ -d "$INSTALL/vendors/mfds" ] || die "installation did not create $INSTALL/vendors/mfds"
echo
echo "installed the mfds custom operators; before training run:"
echo "  export ASCEND_CUSTOM_OPP_PATH=$INSTALL/vendors/mfds:\${ASCEND_CUSTOM_OPP_PATH:-}"
echo "  export LD_LIBRARY_PATH=$INSTALL/vendors/mfds/op_api/lib:\${LD_LIBRARY_PATH:-}"
