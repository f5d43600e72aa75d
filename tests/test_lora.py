"""LoRA: frozen base bit for bit, adapter-only checkpoints, exact merge, parameter counts."""
from __future__ import annotations

import os

import numpy as np
import pytest
import mindspore as ms

from conftest import ROOT, random_ids
from mindformers_ds import DeepseekForCausalLM, config
from mindformers_ds.checkpoint import manager
from mindformers_ds.checkpoint.safetensors_io import SafetensorsFile
from mindformers_ds.models.deepseek.lora_linear import LoraLinear, merge_adapters as merge_lora
from mindformers_ds.train.lora import adapter_parameters
from mindformers_ds.train.lora_merge import merge_checkpoint
from mindformers_ds.train.setup import build_model
from mindformers_ds.train.trainer import Trainer

LORA = os.path.join(ROOT, "configs/deepseek_v3/finetune_lora_tiny.yaml")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    cfg = config.load(LORA, [f"train.output_dir={out / 'run'}", "train.max_steps=20", "train.eval_every=0",
                             "train.exact_match_samples=0", "data.max_samples=200", "checkpoint.save_every=10",
                             "logging.progress_bar=false", "model.hidden_size=64", "model.intermediate_size=128",
                             "model.moe_intermediate_size=32", "lora.rank=4"])
    os.chdir(ROOT)
    base = {p.name: p.asnumpy().copy() for p in build_model(cfg).get_parameters()}
    trainer = Trainer(cfg)
    summary = trainer.run()
    return cfg, trainer, summary, base


def test_base_weights_unchanged_bit_for_bit(lora_run):
    _, trainer, summary, base = lora_run
    for p in trainer.model.get_parameters():
        if p.name in base:
            np.testing.assert_array_equal(p.asnumpy(), base[p.name], err_msg=p.name)
    assert summary["final_loss"] < summary["first_loss"]
    assert any(np.abs(p.asnumpy()).max() > 0 for p in adapter_parameters(trainer.model) if p.name.endswith("lora_b"))


def test_trainable_count_is_rank_times_in_plus_out(lora_run):
    cfg, trainer, summary, _ = lora_run
    targets = [c for n, c in trainer.model.cells_and_names() if isinstance(c, LoraLinear)]
    want = sum(4 * (c.in_features + c.out_features) for c in targets)
    assert summary["n_trainable"] == want == sum(int(np.prod(p.shape)) for p in adapter_parameters(trainer.model))
    assert {n.split(".")[-1] for n, c in trainer.model.cells_and_names() if isinstance(c, LoraLinear)} \
        == set(cfg.lora.targets)
    log = open(os.path.join(cfg.train.output_dir, "train.log")).read()
    assert f"{want} trainable" in log


def test_checkpoint_holds_only_adapters_and_merges_exactly(lora_run, tmp_path):
    cfg, trainer, _, _ = lora_run
    ck = manager.latest(os.path.join(cfg.train.output_dir, "checkpoints"))
    with SafetensorsFile(os.path.join(ck, "adapter.safetensors")) as f:
        assert f.keys() and all(n.endswith((".lora_a", ".lora_b")) for n in f.keys())
    assert not os.path.exists(os.path.join(ck, "model.safetensors"))
    ids = ms.Tensor(random_ids(2, 24, 300, seed=3))
    with_adapters = trainer.model(ids).asnumpy()
    # mfds lora merge: base rebuilt from the config, adapters from the checkpoint
    merge_checkpoint(cfg, ck, str(tmp_path / "merged"))
    merged = DeepseekForCausalLM.from_pretrained(str(tmp_path / "merged"))
    # "within 1e-5" relative to the logits' scale: merging reorders float32 sums (x W' vs x W + s x A^T B^T)
    tol = 1e-5 * np.abs(with_adapters).max()
    np.testing.assert_allclose(merged(ids).asnumpy(), with_adapters, atol=tol, rtol=0)
    # and in place: the model without adapters computes the same logits (through a new top-level cell:
    # MindSpore keeps using a graph compiled before the merge, see merge_lora)
    n_adapted = len(adapter_parameters(trainer.model)) // 2
    assert merge_lora(trainer.model) == n_adapted and not adapter_parameters(trainer.model)

    class Fresh(ms.nn.Cell):
        def __init__(self, m):
            super().__init__(auto_prefix=False)
            self.m = m

        def construct(self, x):
            return self.m(x)
    np.testing.assert_allclose(Fresh(trainer.model)(ids).asnumpy(), with_adapters, atol=tol, rtol=0)


def test_lora_replaces_the_linear_and_keeps_its_parameter_names(lora_run):
    """LoRA is a cell that replaces the Linear it adapts: no attribute is attached to the
    Linear, the base weight keeps its object and its name, only the adapters are new."""
    from mindformers_ds.models.deepseek.layers import Linear
    from mindformers_ds.train.lora import apply_lora
    cfg = lora_run[0]
    model = build_model(cfg)
    before = {p.name: p for p in model.get_parameters()}
    adapters = apply_lora(model, cfg.lora, cfg.train.seed)
    after = {p.name: p for p in model.get_parameters()}
    assert set(after) == set(before) | set(adapters) and len(after) == len(before) + len(adapters)
    assert all(after[n] is p for n, p in before.items())
    adapted = {n: c for n, c in model.cells_and_names() if isinstance(c, LoraLinear)}
    assert {n.split(".")[-1] for n in adapted} == set(cfg.lora.targets)
    assert all(f"{n}.lora_a" in after and c.weight is before[f"{n}.weight"] for n, c in adapted.items())
    assert not any(hasattr(c, "lora_a") for _, c in model.cells_and_names() if type(c) is Linear)
    assert merge_lora(model) == len(adapted)
    assert {p.name for p in model.get_parameters()} == set(before)


def test_lora_under_tensor_parallelism_is_refused_in_one_line():
    """A split linear's adapter would be split too and its A trained apart on each tp rank: the
    explicit executor refuses the layout before anything starts, naming the field."""
    from mindformers_ds.errors import ConfigError
    from mindformers_ds.parallel.executors import ExplicitExecutor
    cfg = config.load(LORA, ["parallel.tp=2"], check_paths=False)
    with pytest.raises(ConfigError, match=r"parallel\.tp=2 with lora\.enabled") as e:
        ExplicitExecutor().check(cfg, 2)
    assert "\n" not in str(e.value) and "--set" in str(e.value)
    ExplicitExecutor().check(config.load(LORA, ["parallel.dp=2"], check_paths=False), 2)   # dp is fine
