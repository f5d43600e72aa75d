"""Cluster presets (`parallel/*.yaml`): a cluster description, a model config and a layout.

    cluster: {nodes, devices_per_node, device, device_memory_gb, peak_tflops_bf16,
              intra_node_gbps, inter_node_gbps, [runtime_overhead_gb, compute_efficiency, activation_factor,
              layer_graph_gb, recompute_activation_factor, families: {model_type: {one of those: value}}]}
    model: configs/...yaml          (its model section is used)
    train: {seq_length, micro_batch_size, global_batch_size}
    parallel: {dp, tp, ep, pp, ...}
`load_preset` validates it: the layout must fill the cluster exactly and pass every rule of
the parallel config (heads/experts/layers divisibility) for that model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Optional, Sequence

from ..config import RunConfig, load, read_yaml_mapping, rebuild
from ..errors import ConfigError


FAMILY_FIELDS = ("runtime_overhead_gb", "layer_graph_gb", "activation_factor", "recompute_activation_factor")


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: int
    devices_per_node: int
    device: str
    device_memory_gb: float
    peak_tflops_bf16: float
    intra_node_gbps: float
    inter_node_gbps: float
    runtime_overhead_gb: float = 0.0   # framework runtime, compiled graphs, workspace per device
    layer_graph_gb: float = 0.0        # and per distinct layer graph a stage compiles (reuse keys)
    compute_efficiency: float = 0.5    # fraction of peak the matmuls sustain (an assumption)
    activation_factor: float = 1.0     # executor's activation memory / the ideal count (measured on CPU)
    # None: recompute frees a marked layer's activations (Ascend); a number: it frees nothing and the
    # recomputed forward adds this share of them (measured on MindSpore's CPU executor)
    recompute_activation_factor: Optional[float] = None
    # the executor constants measured for one model family where they differ (model_type -> {field:
    # value}): on CPU, V4's graph (mHC, compressors, three attention kinds) keeps more than V3's
    families: Dict[str, Dict[str, float]] = field(default_factory=dict)

    @property
    def devices(self) -> int:
        return self.nodes * self.devices_per_node

    def for_model(self, model) -> "Cluster":
        """This cluster with the constants measured for `model`'s family."""
        return replace(self, **self.families.get(model.model_type, {}))


@dataclass(frozen=True)
class Preset:
    path: str
    cluster: Cluster
    run: RunConfig
    seq_length: int
    micro_batch_size: int
    global_batch_size: int


def load_preset(path: str, root: Optional[str] = None, run: Optional[RunConfig] = None,
                overrides: Sequence[str] = ()) -> Preset:
    """Read and validate a preset. `run` (from `mfds plan --config`) replaces the preset's model;
    the preset's layout and shapes apply over it, and `overrides` (`--set a.b=c`) over both."""
    doc: Dict[str, Any] = read_yaml_mapping(path)
    try:
        cluster = Cluster(**doc["cluster"])
    except (KeyError, TypeError) as e:
        raise ConfigError(path, "cluster", f"cluster section is missing or malformed ({e})") from None
    for family, values in cluster.families.items():
        bad = sorted(set(values or {}) - set(FAMILY_FIELDS)) if isinstance(values, dict) else ["(not a mapping)"]
        if bad:
            raise ConfigError(path, f"cluster.families.{family}", f"cluster.families.{family} sets {bad}; it may "
                              f"set only {list(FAMILY_FIELDS)}")
    train = doc.get("train", {}) or {}
    if run is None:
        model_path = doc.get("model")
        if not model_path:
            raise ConfigError(path, "model", "model: path to a run config is required")
        full = model_path if os.path.isabs(model_path) else os.path.join(root or os.getcwd(), model_path)
        run = load(full, check_paths=False)
    layer: Dict[str, Any] = {"parallel": doc.get("parallel", {}) or {}}
    if "seq_length" in train:
        layer["data"] = {"seq_length": int(train["seq_length"])}
    if "micro_batch_size" in train:
        layer["train"] = {"micro_batch_size": int(train["micro_batch_size"])}
    run = rebuild(run, [(path, layer)], list(overrides), check_paths=False)
    par = run.parallel
    if par.world_size != cluster.devices:
        set_by = [run.origin(f"parallel.{k}") for k in ("dp", "tp", "pp")]
        raise ConfigError("--set" if "--set" in set_by else path, "parallel",
                          f"parallel.dp*tp*pp={par.world_size} must equal the cluster's {cluster.nodes} nodes x "
                          f"{cluster.devices_per_node} devices = {cluster.devices} ({path})")
    mbs = run.train.micro_batch_size
    gbs = int(train.get("global_batch_size", mbs * par.dp))
    if gbs % (mbs * par.dp):
        raise ConfigError(path, "train.global_batch_size", f"train.global_batch_size={gbs} must be a multiple of "
                          f"micro_batch_size*dp={mbs * par.dp}")
    return Preset(path, cluster, run, run.data.seq_length, mbs, gbs)
