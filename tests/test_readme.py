"""The README's commands, run as a user would copy them: every line of its command-line block
(paths redirected to a temporary directory, tiny models in place of the release, two training
steps), and its demo prompt in the demo data's own format."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT
from mindformers_ds.data.demo_tasks import INSTRUCTIONS, LENGTHS, SYMBOLS

FAST = ["model.num_hidden_layers=2", "model.hidden_size=64", "model.moe_intermediate_size=32",
        "model.intermediate_size=128", "data.max_samples=200", "train.max_steps=2", "train.exact_match_samples=4",
        "train.eval_batches=1", "logging.progress_bar=false"]


def readme_commands():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("mfds ")]


def test_the_demo_prompt_is_in_the_demo_datas_format():
    gen = next(c for c in readme_commands() if c.startswith("mfds generate"))
    prompt = shlex.split(gen.replace("$'", "'").replace("\\n", "\n"))[-1]
    instruction, given = prompt.split("\n\n")
    task = next(t for t, text in INSTRUCTIONS.items() if text == instruction)
    assert " " not in given and set(given) <= set(SYMBOLS) and len(given) == LENGTHS[task]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny HF directory standing for `DeepSeek-V3` (the model of parallel_tiny.yaml)."""
    from mindformers_ds import config
    from mindformers_ds.models.deepseek import build_model
    tmp = tmp_path_factory.mktemp("readme")
    cfg = config.load(os.path.join(ROOT, "configs/deepseek_v3/parallel_tiny.yaml"), check_paths=False)
    model = build_model(cfg.model.model_config())
    model.init_weights(0)
    model.save_pretrained(str(tmp / "hf"))
    return tmp


def _redirect(cmd: str, tmp) -> str:
    cmd = cmd.replace("step_00000600", "step_00000002")  # the demo's 600 steps are 2 here
    names = {"runs/lr_1e-4": tmp / "lr", "runs/finetune_tiny": tmp / "lr", "data/demo": tmp / "demo_data", "DeepSeek-V3": tmp / "hf", "ckpt/v3": tmp / "ckpt_v3",
             "hf_out": tmp / "hf_out", "shards": tmp / "shards", "full": tmp / "full",
             "run.yaml": "configs/deepseek_v3/parallel_tiny.yaml"}
    for name, to in names.items():
        cmd = re.sub(rf"(?<![\w/.-]){re.escape(name)}(?![\w.-])", str(to), cmd)
    if cmd.startswith("mfds train"):
        cmd += "".join(f" --set {s}" for s in FAST)
    return cmd


def test_every_readme_command_runs(workspace):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    ran = []
    for line in readme_commands():
        cmd = _redirect(line, workspace)
        if cmd.startswith("mfds launch"):  # validated up front as `mfds launch` does; tests/test_parallel_msrun.py runs it
            from mindformers_ds.cli import build_parser
            from mindformers_ds.parallel.explicit import check_explicit_layout
            from mindformers_ds.parallel.launch import _train_config
            args = build_parser().parse_args(shlex.split(cmd.split("#")[0])[1:])
            cfg = _train_config(args.train_args[1:])
            check_explicit_layout(cfg.parallel, args.nproc, cfg.origin)
            continue
        r = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{line}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        ran.append((line.split()[1], r.stdout))
    out = dict(ran)
    assert "checkpoint: " in out["train"]
    assert json.loads(out["eval"])["eval_loss"] > 0
    assert "layout: dp=16 tp=8" in out["plan"]
    assert os.path.isfile(workspace / "lr" / "report" / "index.html")
    assert os.path.isfile(workspace / "demo_data" / "train.jsonl")
    assert os.path.isfile(workspace / "full" / "model.safetensors") and os.path.isdir(workspace / "shards" / "rank_0")
    assert len(ran) == len(readme_commands()) - 1
