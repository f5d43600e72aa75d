"""Shared fixtures: MindSpore graph mode on CPU, and tiny random HuggingFace DeepSeek models
built with transformers (the numerical oracle) and saved to disk once per session."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("GLOG_v", "3")  # MindSpore: errors only
# the suite's GEMM-peak measurement (taken on a loaded machine) must not become the user's cache
import tempfile  # noqa: E402
os.environ.setdefault("MFDS_CACHE_DIR", os.path.join(tempfile.gettempdir(), "mindformers_ds-test-cache"))

import mindspore as ms  # noqa: E402

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")

YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32,
        "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1}

V3_TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
               num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
               n_routed_experts=8, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, v_head_dim=16,
               qk_nope_head_dim=16, n_group=4, topk_group=2, num_experts_per_tok=2, first_k_dense_replace=1,
               max_position_embeddings=256, rope_parameters=YARN, initializer_range=0.1)

V2_LITE_TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                    num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=2,
                    n_routed_experts=8, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, v_head_dim=16,
                    qk_nope_head_dim=16, n_group=1, topk_group=1, topk_method="greedy", num_experts_per_tok=3,
                    first_k_dense_replace=1, max_position_embeddings=256,
                    rope_parameters=dict(YARN, mscale=0.707, mscale_all_dim=0.707), initializer_range=0.1)


# V3.2: the tiny V3 plus a Lightning Indexer that keeps 8 of up to 40 keys per query
V32_TINY = dict(V3_TINY, index_topk=8, index_n_heads=8, index_head_dim=16)


def build_hf(kind: str, seed: int = 0, **overrides):
    """A random transformers DeepSeek model (eval mode, float32). V3/V3.2 get a non-zero router bias."""
    import torch
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM
    torch.manual_seed(seed)
    if kind in ("v3", "v32"):
        if kind == "v32":
            from transformers import DeepseekV32Config, DeepseekV32ForCausalLM
            model = DeepseekV32ForCausalLM(DeepseekV32Config(**{**V32_TINY, **overrides}))
        else:
            model = DeepseekV3ForCausalLM(DeepseekV3Config(**{**V3_TINY, **overrides}))
        with torch.no_grad():
            for m in model.modules():
                if hasattr(m, "e_score_correction_bias"):
                    m.e_score_correction_bias.normal_(0.0, 0.05)
    else:
        cfg = DeepseekV2Config(**{**V2_LITE_TINY, **overrides})
        model = DeepseekV2ForCausalLM(cfg)
    return model.float().eval()


def save_hf(model, path: str, mtp_layers: int = 0) -> str:
    """save_pretrained; transformers' tiny models have no MTP weights, so the saved config says so
    unless `mtp_layers` asks otherwise."""
    model.save_pretrained(path)
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["num_nextn_predict_layers"] = mtp_layers
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


@pytest.fixture(scope="session")
def hf_v3_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hf_v3"))
    return save_hf(build_hf("v3"), path)


@pytest.fixture(scope="session")
def hf_v2_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hf_v2"))
    return save_hf(build_hf("v2"), path)


def free_port() -> int:
    """A scheduler port free on this host now (for launches that must agree on one: several nodes)."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def random_ids(batch: int, seq: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (batch, seq)).astype(np.int32)


def load_hf(path: str):
    import torch
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A 30-step config-driven fine-tune of a small V3 on the demo data, shared by several tests."""
    from mindformers_ds import config
    from mindformers_ds.train.trainer import Trainer
    tmp = tmp_path_factory.mktemp("trainer")
    sets = [f"train.output_dir={tmp / 'run'}", "train.max_steps=30", "train.micro_batch_size=8",
            "train.eval_every=15", "train.eval_batches=2", "train.exact_match_samples=8", "train.max_new_tokens=6",
            "data.max_samples=400", "data.packing=true", "data.seq_length=96", "checkpoint.save_every=10",
            "checkpoint.keep_last=2", "logging.progress_bar=false", "logging.log_every=1",
            "train.profile.start_step=3", "train.profile.steps=2",
            "model.hidden_size=64", "model.moe_intermediate_size=32", "model.intermediate_size=128"]
    cfg = config.load(os.path.join(ROOT, "configs/deepseek_v3/finetune_tiny.yaml"), sets)
    os.chdir(ROOT)
    summary = Trainer(cfg).run()
    return cfg, summary


# The suite runs on two xdist workers, a whole file per worker at a time (`make test`). These files
# hold most of the wall time (msrun launches, killed-and-resumed runs, the V4 fine-tune): handing
# them out first lets the two workers finish together instead of one waiting on the last of them.
SLOW_FIRST = ("test_depth.py", "test_depth_v4.py", "test_parallel_msrun.py", "test_resume.py", "test_v4.py", "test_first_hour.py",
              "test_generation.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)
    items.sort(key=rank)  # stable: the order inside each file is kept
