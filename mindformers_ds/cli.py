"""`mfds`: train | convert | launch | plan | generate | eval | data | lora | report.

Errors a user can fix (bad config, data, checkpoint) print one line naming the file and
field and exit with status 2; nothing is written for them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from .errors import USER_ERRORS, TrainingInterrupted


def cmd_train(a) -> int:
    from . import config
    from .parallel.config import launched_workers
    from .train.preflight import preflight
    from .utils.native_logs import route_native_logs
    cfg = config.load(a.config, a.set)
    distributed = launched_workers() > 1  # started by msrun (mfds launch)
    preflight(cfg, distributed)  # refusals come before anything is created or imported
    route_native_logs(cfg.train.output_dir, cfg.logging.level)  # before MindSpore loads
    from .parallel.executors import executor_for
    from .train.setup import set_graph_mode
    from .train.trainer import Trainer
    set_graph_mode()
    executor = executor_for(cfg.parallel)
    env = executor.start(cfg, distributed)
    summary = Trainer(cfg, env, executor).run()
    if env.is_main:
        _print_summary(summary)
    return 0


def cmd_launch(a) -> int:
    from .parallel.launch import launch
    args = a.train_args[1:] if a.train_args[:1] == ["--"] else a.train_args
    return launch(a.nproc, args, a.nnodes, a.node_rank, a.master_addr, a.master_port, a.log_dir, a.cluster_timeout,
                  max_restarts=a.max_restarts)


def _print_summary(s: dict) -> None:
    print()
    if s.get("first_loss") is not None:
        print(f"loss: {s['first_loss']:.4f} (first step) -> {s['final_loss']:.4f} (last step)")
    if "eval_loss" in s:
        print(f"held-out loss {s['eval_loss']:.4f}, perplexity {s['eval_ppl']:.2f}")
    if "exact_match_after" in s:
        before = s.get("exact_match_before")
        b = f"{before:.1%}" if before is not None else "n/a (resumed)"
        print(f"held-out exact match: {b} before -> {s['exact_match_after']:.1%} after fine-tuning")
    for ex in s.get("examples", [])[:3]:
        print(f"  sample: {ex['prompt'].strip()!r} -> {ex['got']!r} (expected {ex['expected']!r})")
    if s.get("checkpoint"):
        print(f"checkpoint: {s['checkpoint']}")


def _checkpoint_run_config(a):
    """The run config for `mfds eval` / `generate`: --config, else the one the checkpoint carries
    (training checkpoints hold run_config.yaml), else None."""
    from . import config
    if a.config:
        return config.load(a.config, a.set)
    path = os.path.join(a.checkpoint, "run_config.yaml")
    if not os.path.isfile(path):
        return None
    tree = config.read_yaml_mapping(path)
    for key in ("hf_config", "pretrained"):  # the model itself comes from the checkpoint
        (tree.get("model") or {}).pop(key, None)
    return config.from_dict(tree, path, a.set)


def _load_for_inference(a):
    """(model, tokenizer, seq_length, run config or None) from --checkpoint alone: the tokenizer
    and the sequence length come from --tokenizer / --max-length, else --config, else what the
    checkpoint carries (tokenizer.json, run_config.yaml)."""
    from .checkpoint.manager import check_model_dir
    from .checkpoint.pretrained import from_pretrained
    from .data.tokenizer import Tokenizer
    check_model_dir(a.checkpoint)
    cfg = _checkpoint_run_config(a)
    from .utils.native_logs import route_native_logs, user_log_dir
    route_native_logs(user_log_dir(), cfg.logging.level if cfg is not None else "INFO")  # before MindSpore loads
    tok_path, seq = a.tokenizer, a.max_length
    if cfg is not None:
        tok_path = tok_path or cfg.data.tokenizer
        seq = seq or cfg.data.seq_length
    if not tok_path and os.path.isfile(os.path.join(a.checkpoint, "tokenizer.json")):
        tok_path = os.path.join(a.checkpoint, "tokenizer.json")
    if not tok_path:
        from .errors import ConfigError
        raise ConfigError("--tokenizer", "tokenizer", f"{a.checkpoint} holds no tokenizer.json: give --tokenizer PATH "
                          f"or --config with data.tokenizer")
    tok = Tokenizer(tok_path)
    from .train.setup import set_graph_mode
    set_graph_mode()
    model = _load_model(a.checkpoint, cfg, from_pretrained)
    return model, tok, seq or min(128, model.config.max_position_embeddings), cfg


def _load_model(path: str, cfg, from_pretrained):
    """A whole model in this process from a checkpoint of any layout: the per-rank shards of a
    parallel run are reassembled by the executor `parallel.executor` names (the run config's, or
    the default), anything else is read by `from_pretrained`."""
    from .parallel.shards import LAYOUT_FILE
    if not os.path.isfile(os.path.join(path, LAYOUT_FILE)):
        return from_pretrained(path)
    from .config import ParallelConfig
    from .models.deepseek import DeepseekConfig, build_model
    from .parallel.executors import executor_for
    from .train.setup import DistEnv
    # shards are written by this stack for the model their config.json describes (MTP included)
    model = build_model(DeepseekConfig.from_hf_file(os.path.join(path, "config.json")))
    model.init_weights(0)  # every tensor is then read from the shards
    executor = executor_for(cfg.parallel if cfg is not None else ParallelConfig())
    executor.load(path, "model.safetensors", list(model.get_parameters()), None, DistEnv())
    return model


def cmd_generate(a) -> int:
    from .generation import Generator
    model, tok, seq, _ = _load_for_inference(a)
    gen = Generator(model, seq, batch_size=1, use_cache=not a.no_cache)
    msgs = [{"role": "user", "content": a.prompt}]
    prompt = tok.encode_prompt(msgs) if not a.raw else [tok.bos_id] + tok.encode(a.prompt)
    out = gen.generate([prompt], a.max_new_tokens, eos_id=tok.eos_id, temperature=a.temperature,
                       top_k=a.top_k, top_p=a.top_p, seed=a.seed)[0]
    print(tok.decode(out))
    return 0


def cmd_eval(a) -> int:
    from .data.datasets import load_samples, read_jsonl
    from .data.packing import build_rows, fit_length
    from .generation import Generator
    from .train.evaluation import EvalSums, eval_loss, exact_match
    model, tok, seq, cfg = _load_for_inference(a)
    if cfg is None:
        from .errors import ConfigError
        raise ConfigError("--config", "config", f"{a.checkpoint} holds no run_config.yaml: give --config with the "
                          f"data to evaluate on")
    path = cfg.data.eval_file or cfg.data.train_file
    samples, _, _ = fit_length(load_samples(path, tok, cfg.data.format), seq, cfg.data.overlong)
    rows = build_rows(samples, seq, tok.pad_id, False)
    res = eval_loss(EvalSums(model), rows, min(cfg.train.micro_batch_size, len(rows)), 0)
    recs = [r for _, r in read_jsonl(path) if "instruction" in r or "messages" in r][:a.exact_match_samples]
    if recs:
        em = exact_match(Generator(model, seq, batch_size=16), tok, recs, cfg.train.max_new_tokens)
        res.update(exact_match=em["exact_match"], exact_match_n=em["n"])
    print(json.dumps(res, indent=2))
    return 0


def cmd_data(a) -> int:
    if a.data_cmd == "demo":
        from .data import demo_tasks
        demo_tasks.main(["--out", a.out, "--train", str(a.train), "--eval", str(a.eval), "--seed", str(a.seed)])
        return 0
    from . import config
    from .data.mindrecord import prepare
    cfg = config.load(a.config, a.set)
    print(prepare(cfg, a.out))
    return 0


def cmd_lora(a) -> int:
    from . import config
    from .train.lora_merge import merge_checkpoint
    from .train.setup import set_graph_mode
    cfg = config.load(a.config, a.set)
    set_graph_mode()
    print(merge_checkpoint(cfg, a.adapter, a.out, a.layout))
    return 0


def cmd_report(a) -> int:
    from .observe.report import build_report
    res = build_report(a.run_dir, a.out, a.node_dirs)
    ranks = f"; {len(res['ranks'])} ranks" if len(res["ranks"]) > 1 else ""
    print(f"{res['html']} ({len(res['figures'])} figures: {', '.join(res['figures'])}{ranks})")
    return 0


def cmd_plan(a) -> int:
    from . import config
    from .parallel.presets import load_preset
    from .plan.estimate import plan_layout
    from .plan.render import format_plan, format_ranking
    from .plan.search import search
    run = config.load(a.config, check_paths=False) if a.config else None
    preset = load_preset(a.cluster, os.getcwd(), run, a.set)  # --set applies over the preset's layout
    c = preset.cluster
    p = plan_layout(preset.run.model.model_config(), preset.run.parallel, c, preset.micro_batch_size,
                    preset.seq_length, preset.global_batch_size, preset.run.lora)
    ranked = search(preset, a.top) if a.search else []
    if a.json:
        print(json.dumps({"cluster": c.name, "plan": p.as_dict(), "search": [r.as_dict() for r in ranked]}))
        return 0
    print(f"{c.name}: {c.devices} x {c.device}, seq {preset.seq_length}, micro-batch {preset.micro_batch_size}, "
          f"global batch {preset.global_batch_size}")
    print(format_plan(p, c.device, c.device_memory_gb))
    if a.search:
        print(format_ranking(ranked))
    return 0


def with_config(sp, required=True):
    sp.add_argument("--config", required=required, help="run YAML")
    sp.add_argument("--set", action="append", default=[], metavar="A.B=V",
                    help="override a config field (repeatable), e.g. --set train.max_steps=100")


def add_model_commands(sub, fmt) -> None:
    """train, generate, eval."""
    t = sub.add_parser("train", help="train / fine-tune from a YAML config", formatter_class=fmt)
    with_config(t)
    t.set_defaults(fn=cmd_train)

    for name, fn, help_ in (("generate", cmd_generate, "generate text from a checkpoint"),
                            ("eval", cmd_eval, "perplexity and exact match of a checkpoint")):
        g = sub.add_parser(name, help=help_, formatter_class=fmt)
        with_config(g, required=False)
        g.add_argument("--checkpoint", required=True,
                       help="a step directory (runs/X/checkpoints/step_N), a converted or a HF directory")
        g.add_argument("--tokenizer", help="tokenizer.json (default: the config's data.tokenizer, else the one "
                       "the checkpoint carries)")
        g.add_argument("--max-length", type=int, default=None,
                       help="prompt + answer length (default: data.seq_length of the run, else 128)")
        if name == "generate":
            g.add_argument("--prompt", required=True, help="the user message (chat template applied unless --raw)")
            g.add_argument("--raw", action="store_true", help="no chat template")
            g.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate at most")
            g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy")
            g.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0: all)")
            g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
            g.add_argument("--seed", type=int, default=0, help="sampling seed")
            g.add_argument("--no-cache", action="store_true", help="recompute the whole sequence per token")
        else:
            g.add_argument("--exact-match-samples", type=int, default=200,
                           help="held-out records scored by greedy generation (0: loss only)")
        g.set_defaults(fn=fn)


def add_tool_commands(sub, fmt) -> None:
    """data, launch, lora, report, plan."""
    d = sub.add_parser("data", help="data tools", formatter_class=fmt)
    dsub = d.add_subparsers(dest="data_cmd", required=True, metavar="{demo,prepare}")
    dd = dsub.add_parser("demo", help="write the demo instruction dataset", formatter_class=fmt)
    dd.add_argument("--out", default="data/demo", help="output directory (train.jsonl, eval.jsonl)")
    dd.add_argument("--train", type=int, default=6000, help="training records")
    dd.add_argument("--eval", type=int, default=200, help="held-out records")
    dd.add_argument("--seed", type=int, default=0, help="generator seed (the data is deterministic)")
    dp = dsub.add_parser("prepare", help="tokenise a config's data into a MindRecord cache", formatter_class=fmt)
    with_config(dp)
    dp.add_argument("--out", default=None, help="cache directory (default: data.cache_dir)")
    d.set_defaults(fn=cmd_data)

    la = sub.add_parser("launch", help="run an mfds command on N workers with msrun", formatter_class=fmt,
                        description="mfds launch --nproc 4 -- train --config X.yaml")
    la.add_argument("--nproc", type=int, required=True, help="workers on this node")
    la.add_argument("--nnodes", type=int, default=1, help="nodes in the job")
    la.add_argument("--node-rank", type=int, default=0, help="this node's index (0 is the master)")
    la.add_argument("--master-addr", default="127.0.0.1", help="address of node 0")
    la.add_argument("--master-port", type=int, default=None,
                    help="msrun scheduler port on node 0 (default: a free port on one node, 8118 across nodes)")
    la.add_argument("--log-dir", default=None, help="workers' logs (default: <train.output_dir>/logs)")
    la.add_argument("--cluster-timeout", type=int, default=120, help="seconds msrun waits for a missing worker")
    la.add_argument("--max-restarts", type=int, default=None,
                    help="restart the job from its newest checkpoint when a worker dies or freezes, up to N times "
                         "(default: train.max_restarts, 0)")
    la.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the mfds command, e.g. train --config X")
    la.set_defaults(fn=cmd_launch)

    lo = sub.add_parser("lora", help="LoRA tools", formatter_class=fmt)
    lsub = lo.add_subparsers(dest="lora_cmd", required=True, metavar="{merge}")
    lm = lsub.add_parser("merge", help="fold a LoRA checkpoint's adapters into its base model", formatter_class=fmt)
    with_config(lm)
    lm.add_argument("--adapter", required=True, help="checkpoint directory holding adapter.safetensors")
    lm.add_argument("--out", required=True, help="output directory of the merged model")
    lm.add_argument("--layout", choices=["hf", "mindspore"], default="mindspore",
                    help="hf: per-expert tensors transformers loads; mindspore: stacked experts")
    lo.set_defaults(fn=cmd_lora)

    r = sub.add_parser("report", help="HTML page and PNGs of a run's curves, expert load and router bias",
                       formatter_class=fmt)
    r.add_argument("run_dir", help="a run's train.output_dir (holding metrics.jsonl)")
    r.add_argument("node_dirs", nargs="*", default=[],
                   help="a multi-node run's other nodes' run directories, when not shared (merged by rank)")
    r.add_argument("--out", default=None, help="default: RUN_DIR/report")
    r.set_defaults(fn=cmd_report)

    pl = sub.add_parser("plan", help="memory, communication and step time of a layout; --search ranks layouts",
                        formatter_class=fmt)
    with_config(pl, required=False)
    pl.add_argument("--cluster", required=True, help="a cluster preset, parallel/*.yaml")
    pl.add_argument("--search", action="store_true", help="rank every valid layout by estimated step time")
    pl.add_argument("--top", type=int, default=10, help="layouts shown by --search")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(fn=cmd_plan)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter  # every option's help ends with its default
    p = argparse.ArgumentParser(prog="mfds", description="MindSpore training stack for DeepSeek models",
                                formatter_class=fmt)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{train,generate,eval,data,launch,lora,report,plan,convert}")
    add_model_commands(sub, fmt)
    add_tool_commands(sub, fmt)
    from .checkpoint.cli import add_convert_parser
    add_convert_parser(sub, fmt)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
