"""The explicit executor under real msrun (mccl on CPU): every layout reproduces a single-process
run on the same global batch, step by step, and shards merge back to the same weights."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, free_port
from mindformers_ds.checkpoint import manager
from mindformers_ds.checkpoint.safetensors_io import SafetensorsFile
from mindformers_ds.parallel.shards import ShardedCheckpoint, merge_checkpoint
from mindformers_ds.utils.logging import read_metrics

CFG = os.path.join(ROOT, "configs/deepseek_v3/parallel_tiny.yaml")
GLOBAL_ROWS = 8
ZERO = ("--set", "parallel.optimizer_shard=true")
SEQUENCE_PARALLEL = ("--set", "parallel.sequence_parallel=true")


def sets(out, dp=1, tp=1, ep=1, steps=4, extra=()):
    return ["--set", f"train.output_dir={out}", "--set", f"parallel.dp={dp}", "--set", f"parallel.tp={tp}",
            "--set", f"parallel.ep={ep}", "--set", f"train.micro_batch_size={GLOBAL_ROWS // dp}",
            "--set", f"train.max_steps={steps}", "--set", "train.resume=auto", *extra]


def train(out, dp=1, tp=1, ep=1, steps=4, extra=(), timeout=600):
    world = dp * tp
    cmd = [sys.executable, "-m", "mindformers_ds"]
    if world > 1:
        # no --master-port: the launcher takes a free one (fixed ports collided between xdist workers)
        cmd += ["launch", "--nproc", str(world), "--cluster-timeout", "60", "--"]
    cmd += ["train", "--config", CFG, *sets(out, dp, tp, ep, steps, extra)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def losses(out):
    return {r["step"]: r["loss"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r}


def full_weights(out, tmp):
    ck = manager.latest(os.path.join(out, "checkpoints"))
    if os.path.isfile(os.path.join(ck, "layout.json")):
        merged = os.path.join(tmp, os.path.basename(out) + "_merged")
        merge_checkpoint(ck, merged)
        ck = merged
    with SafetensorsFile(os.path.join(ck, "model.safetensors")) as f:
        return {n: f.get_f32(n) for n in f.keys()}


def full_weights_at(ck, tmp):
    """Weights of one checkpoint directory, merged from its shards when it has them."""
    run = os.path.join(tmp, "view_" + os.path.basename(os.path.dirname(os.path.dirname(ck))) + os.path.basename(ck))
    os.makedirs(os.path.join(run, "checkpoints"), exist_ok=True)
    link = os.path.join(run, "checkpoints", os.path.basename(ck))
    if not os.path.exists(link):
        os.symlink(ck, link)
    return full_weights(run, tmp)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("single") / "run")
    train(out)
    return out


def rank_peaks_mb(out):
    """Each rank's measured peak RSS over the run (metrics `peak_rss_mb`; rank 0 in metrics.jsonl)."""
    peaks = {}
    for name in os.listdir(out):
        if name.startswith("metrics") and name.endswith(".jsonl"):
            rank = int(name[len("metrics_rank"):-len(".jsonl")]) if "rank" in name else 0
            peaks[rank] = max(r["peak_rss_mb"] for r in read_metrics(os.path.join(out, name)) if "peak_rss_mb" in r)
    return peaks


def assert_plan_matches_each_rank(out):
    """`mfds plan`'s per-rank memory estimate (the CPU constants of parallel/cpu_single.yaml, the
    run's own layout) within 20% of every rank's measured peak RSS."""
    from mindformers_ds import config
    from mindformers_ds.train.preflight import estimated_stage_peaks
    cfg = config.load(os.path.join(out, "config.yaml"), check_paths=False)
    per_stage = estimated_stage_peaks(cfg)
    peaks = rank_peaks_mb(out)
    assert len(peaks) == cfg.parallel.world_size
    for rank, measured in peaks.items():
        estimate = per_stage[rank // (cfg.parallel.dp * cfg.parallel.tp)] / 2 ** 20
        assert abs(estimate / measured - 1) <= 0.2, (out, rank, estimate, measured)


def grad_norms(out):
    return {r["step"]: r["grad_norm"] for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "loss" in r}


def assert_same_run(out, ref, tmp, steps=range(1, 5)):
    a, b = losses(ref), losses(out)
    np.testing.assert_allclose([b[s] for s in steps], [a[s] for s in steps], rtol=1e-5, atol=0)
    a, b = grad_norms(ref), grad_norms(out)
    np.testing.assert_allclose([b[s] for s in steps], [a[s] for s in steps], rtol=1e-5, atol=0)
    wa, wb = full_weights(ref, tmp), full_weights(out, tmp)
    assert wa.keys() == wb.keys()
    for name in wa:
        scale = max(np.abs(wa[name]).max(), 1e-6)
        assert np.abs(wb[name] - wa[name]).max() <= 1e-5 * scale, name


@pytest.mark.timeout(900)
@pytest.mark.parametrize("layout", [dict(dp=2), dict(tp=2), dict(tp=2, extra=SEQUENCE_PARALLEL), dict(dp=2, ep=2),
                                    dict(dp=2, extra=ZERO)],
                         ids=["dp2", "tp2", "tp2_sequence_parallel", "ep2", "dp2_optimizer_shard"])
def test_two_workers_match_a_single_process(layout, reference, tmp_path):
    out = str(tmp_path / "run")
    train(out, **layout)
    ck = manager.latest(os.path.join(out, "checkpoints"))
    assert sorted(os.listdir(ck)) == ["config.json", "layout.json", "manifest.json", "rank_0", "rank_1",
                                      "run_config.yaml", "tokenizer.json", "trainer_state.json"]   # the tokenizer and run config travel along
    from mindformers_ds.checkpoint.integrity import verify
    assert verify(ck) is None   # the manifest covers every rank's files
    if "tp" in layout:  # each rank holds half of the heads' projections
        with SafetensorsFile(os.path.join(ck, "rank_1", "model.safetensors")) as f:
            assert f.info("model.layers.0.self_attn.kv_b_proj.weight")[1][0] == 4 * (32 + 32) // 2
    if "ep" in layout:  # and half of the experts
        with SafetensorsFile(os.path.join(ck, "rank_0", "model.safetensors")) as f:
            assert f.info("model.layers.1.mlp.experts.gate_up_proj")[1][0] == 4
    if layout.get("extra") == ZERO:  # ZeRO-1: each rank's moments hold half the rows of every parameter
        assert_half_moments(ck, ranks=2)
    if layout.get("extra") == SEQUENCE_PARALLEL:   # 2 layers + MTP: each gathers before its two blocks
        log = open(os.path.join(out, "train_rank0.log")).read()
        assert "sequence parallel over tp=2: {'sequence gathers': 8, 'sequence reduce-scatters': 4" in log
    assert_same_run(out, reference, str(tmp_path))
    assert_plan_matches_each_rank(out)


def assert_half_moments(ck, ranks):
    """Every rank's optimizer file holds 1/ranks of each moment's rows (ZeRO-1), and the ranks'
    rows together are the whole moment: merged, it has the parameter's shape."""
    with SafetensorsFile(os.path.join(ck, "rank_0", "model.safetensors")) as f:
        shapes = {n: list(f.info(n)[1]) for n in f.keys()}
    for r in range(ranks):
        with SafetensorsFile(os.path.join(ck, f"rank_{r}", "optimizer.safetensors")) as f:
            moments = [n for n in f.keys() if n.startswith("optimizer.exp_avg.")]
            assert len(moments) > 40   # every trainable parameter (the router biases are not)
            for m in moments:
                shape = shapes[m[len("optimizer.exp_avg."):]]
                assert list(f.info(m)[1]) == [shape[0] // ranks, *shape[1:]], m
    ckpt = ShardedCheckpoint(ck)
    try:
        assert list(ckpt.full("optimizer.exp_avg_sq.model.embed_tokens.weight", "optimizer.safetensors").shape) == \
            shapes["model.embed_tokens.weight"]
    finally:
        ckpt.close()


@pytest.mark.timeout(600)
def test_recompute_trains_as_without(reference, tmp_path):
    """`parallel.recompute: true` (every decoder layer reruns its forward in the backward pass) is
    the same computation: the same losses, gradient norms and weights as the reference."""
    out = str(tmp_path / "run")
    train(out, extra=("--set", "parallel.recompute=true"))
    assert "recompute: 3 layers" in open(os.path.join(out, "train.log")).read()   # 2 decoder layers + MTP
    assert_same_run(out, reference, str(tmp_path))
    assert_plan_matches_each_rank(out)


@pytest.mark.timeout(1200)
def test_four_workers_and_resume_under_other_layouts(reference, tmp_path):
    # DP=4 x EP=2 on 4 workers (four data-parallel ranks, experts split in pairs) with the optimizer
    # state sharded (ZeRO-1: dense rows over 4 ranks, experts' over the 2 holding them), saving after 2 steps ...
    saved = str(tmp_path / "dp4ep2")
    train(saved, dp=4, ep=2, steps=2, extra=ZERO)
    assert manager.complete_steps(os.path.join(saved, "checkpoints")) == [2]
    a, b = losses(reference), losses(saved)
    np.testing.assert_allclose([b[1], b[2]], [a[1], a[2]], rtol=1e-5, atol=0)
    # ... resumed under DP=2 x TP=2 (its optimizer state sharded over 2 instead of 4) and under a single
    # process: the losses continue exactly and the final weights equal the uninterrupted single-process
    # run's (so the 4-worker state was)
    for name, layout in (("resume_dp2tp2", dict(dp=2, tp=2, extra=ZERO)), ("resume_single", {})):
        out = str(tmp_path / name)
        os.makedirs(os.path.join(out, "checkpoints"))
        os.symlink(os.path.join(saved, "checkpoints", "step_00000002"), os.path.join(out, "checkpoints", "step_00000002"))
        shutil.copy(os.path.join(saved, "metrics.jsonl"), os.path.join(out, "metrics.jsonl"))
        train(out, **layout)
        assert_same_run(out, reference, str(tmp_path))
        assert_plan_matches_each_rank(out)
    assert_plan_matches_each_rank(saved)


@pytest.mark.timeout(900)
def test_two_nodes_on_one_host_restart_together_and_match_the_single_launch(reference, tmp_path):
    """`mfds launch --nnodes 2 --node-rank {0,1} --master-addr 127.0.0.1 --nproc 1 --max-restarts 1`:
    two launchers, one worker each, sharing the run directory (so dp=2). Node 1's worker is
    SIGKILLed after step 1 is saved: node 1 publishes the verdict, node 0 stops its worker on it,
    both restart from the newest checkpoint, and the run still equals the single process."""
    out = str(tmp_path / "run")
    port = free_port()   # the nodes must agree on one
    nodes = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "mindformers_ds", "launch", "--nproc", "1", "--nnodes", "2", "--node-rank",
               str(node), "--master-addr", "127.0.0.1", "--master-port", str(port), "--cluster-timeout", "60",
               "--max-restarts", "1", "--", "train", "--config", CFG,
               *sets(out, dp=2, extra=("--set", "checkpoint.save_every=1", "--set", "checkpoint.keep_last=4"))]
        nodes.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(1)
    t0 = time.time()
    while not manager.complete_steps(os.path.join(out, "checkpoints")):   # step 1 is saved
        assert all(p.poll() is None for p in nodes) and time.time() - t0 < 300
        time.sleep(0.2)
    victim = int(open(os.path.join(out, "logs", "node_1", "status", "rank_1.pid")).read())
    os.kill(victim, signal.SIGKILL)
    results = [p.communicate(timeout=600) for p in nodes]
    for p, (so, se) in zip(nodes, results):
        assert p.returncode == 0, so[-2000:] + se[-2000:]
        assert "launch: restart 1 of 1: worker rank 1 died; resuming from its newest checkpoint" in se, se[-2000:]
    assert f"error: worker rank 1 (pid {victim}) died without finishing" in results[1][1]
    assert "launch: node 0: node 1 ended the job: worker rank 1 died without finishing" in results[0][1]
    assert sorted(os.listdir(os.path.join(out, "logs"))) == ["node_0", "node_1"]   # logs per node
    assert os.path.isfile(os.path.join(out, "logs", "node_1", "worker_1.log"))
    assert_same_run(out, reference, str(tmp_path))


def test_restarting_nodes_that_share_no_run_directory_is_refused_in_one_line(tmp_path):
    """A node whose peers' launchers never appear in the run directory (not shared) stops before
    any worker starts, naming the directory and the missing node."""
    from mindformers_ds.errors import ConfigError
    from mindformers_ds.parallel.node_agreement import NodeAgreement
    with pytest.raises(ConfigError) as e:
        NodeAgreement(str(tmp_path), nnodes=2, node_rank=0, timeout=1, origin="run.yaml").meet()
    assert str(e.value) == (f"run.yaml: --max-restarts with several nodes: node 1 not seen in {tmp_path}/launch after "
                            "1 s; restarting nodes together needs a run directory every node shares")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("sig,words,within", [
    (signal.SIGKILL, "died without finishing", 60),
    (signal.SIGTERM, "failed (exit status 130: interrupted by SIGINT or SIGTERM)", 60)],
    ids=["killed", "terminated"])
def test_a_dead_or_failed_worker_ends_the_launch_naming_the_rank(sig, words, within, tmp_path):
    """A worker SIGKILLed, or ending by itself with an error (SIGTERM: it stops at a step
    boundary, exit status 130, and msrun then kills rank 0, which must not take the blame), ends
    the launch non-zero naming rank 1, what happened to it and, for the failure, the reason from
    its log; no worker outlives the launch (they run in process groups of their own). A frozen
    worker: tests/test_hang.py, and the restart test below (frozen while it compiles, where
    msrun's heartbeat notices it)."""
    # no --master-port: the launcher picks a free one
    cmd = [sys.executable, "-m", "mindformers_ds", "launch", "--nproc", "2", "--cluster-timeout", "60", "--", "train",
           "--config", CFG, *sets(str(tmp_path / "run"), dp=2, steps=200)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status = os.path.join(str(tmp_path / "run"), "logs", "status")
    t0 = time.time()
    while not os.path.isfile(os.path.join(status, "rank_1.pid")) or not os.path.isfile(
            os.path.join(str(tmp_path / "run"), "metrics.jsonl")):
        assert p.poll() is None and time.time() - t0 < 300
        time.sleep(0.5)
    victim = int(open(os.path.join(status, "rank_1.pid")).read())
    os.kill(victim, sig)
    t_signal = time.time()
    out, err = p.communicate(timeout=180)
    assert p.returncode != 0
    assert f"worker rank 1 (pid {victim}) {words}" in err, err[-2000:]
    assert "worker rank 0" not in err, err[-2000:]
    if sig == signal.SIGTERM:   # its own message, from its log, precedes the launcher's
        assert re.search(r"^stopped at step \d+ of 200 \(interrupted\); ", err, re.M), err[-2000:]
        assert p.returncode == 130
    assert time.time() - t_signal < within
    for rank in (0, 1):
        pid = int(open(os.path.join(status, f"rank_{rank}.pid")).read())
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"


@pytest.mark.timeout(900)
def test_a_killed_then_a_frozen_worker_restart_the_job_which_ends_as_the_uninterrupted_run(reference, tmp_path):
    """`--max-restarts 2`: rank 1 SIGKILLed after step 1, then the restarted job's rank 1 frozen
    (SIGSTOP) as it starts: each time every worker is stopped and the job resumes from its newest
    checkpoint (saved every step here, each rank's shards written in the background:
    `checkpoint.async_save`); it exits 0 and equals the uninterrupted single process, which saved
    synchronously."""
    out = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "mindformers_ds", "launch", "--nproc", "2", "--cluster-timeout", "60",
           "--max-restarts", "2", "--", "train", "--config", CFG,
           *sets(out, dp=2, extra=("--set", "checkpoint.save_every=1", "--set", "checkpoint.keep_last=4",
                                   "--set", "checkpoint.async_save=true"))]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status = os.path.join(out, "logs", "status")

    def wait(pred):
        t0 = time.time()
        while not pred():
            assert p.poll() is None and time.time() - t0 < 300
            time.sleep(0.2)
    wait(lambda: manager.complete_steps(os.path.join(out, "checkpoints")))   # step 1 is saved
    first = int(open(os.path.join(status, "rank_1.pid")).read())
    os.kill(first, signal.SIGKILL)
    pid_file = os.path.join(status, "rank_1.pid")
    wait(lambda: os.path.isfile(pid_file) and (open(pid_file).read().strip() or str(first)) != str(first))
    os.kill(int(open(pid_file).read()), signal.SIGSTOP)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert "launch: restart 1 of 2: worker rank 1 died; resuming from its newest checkpoint" in err
    assert "launch: restart 2 of 2: worker rank 1 stopped responding; resuming from its newest checkpoint" in err
    assert_same_run(out, reference, str(tmp_path))
    saves = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r.get("type") == "save"]
    assert saves and all(r["async"] for r in saves)
    root = os.path.join(out, "checkpoints")
    for step in manager.complete_steps(root):   # the ranks' "written" marks are not part of a checkpoint
        assert not [n for n in os.listdir(manager.step_dir(root, step)) if n.endswith((".written", ".failed"))]


def test_a_failed_workers_reason_is_the_exception_its_log_ends_with(tmp_path):
    """The launcher's one-line reason for a worker that failed by itself: the exception line of
    the last traceback in its log (a real Python failure, MindSpore's chatter around it), else its
    own `error:` message."""
    from mindformers_ds.parallel.worker_watch import worker_reason
    script = ("import sys; print('[WARNING] ME(1): chatter', file=sys.stderr)\n"
              "def collective():\n    raise RuntimeError('Sync run failed: the peer is gone\\n----- C++ stack')\n"
              "collective()\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 1
    (tmp_path / "worker_1.log").write_text(run.stdout + run.stderr)
    assert worker_reason(str(tmp_path), 1) == "RuntimeError: Sync run failed: the peer is gone"
    (tmp_path / "worker_0.log").write_text("[ERROR] ME(2): a MindSpore line\nerror: data.path: no such file\n")
    assert worker_reason(str(tmp_path), 0) == "error: data.path: no such file"
    assert worker_reason(str(tmp_path), 2) == ""   # no log at all


def test_a_taken_master_port_is_refused_in_one_line_before_anything_starts(tmp_path):
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "mindformers_ds", "launch", "--nproc", "2", "--master-port", str(port),
                            "--", "train", "--config", CFG, *sets(str(tmp_path / "run"), dp=2)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: --master-port: port {port} is taken on this host")
    assert not os.path.exists(os.path.join(str(tmp_path), "run", "logs"))


def test_bad_layout_fails_before_any_worker_starts(tmp_path):
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "mindformers_ds", "launch", "--nproc", "2", "--", "train", "--config",
                        CFG, "--set", f"train.output_dir={tmp_path}", "--set", "parallel.tp=3"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: --set: parallel.tp=3 must divide model.num_attention_heads=4"
    assert not os.path.exists(os.path.join(str(tmp_path), "logs"))
    r = subprocess.run([sys.executable, "-m", "mindformers_ds", "launch", "--nproc", "4", "--", "train", "--config",
                        CFG, "--set", f"train.output_dir={tmp_path}", "--set", "parallel.dp=2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "parallel.dp*tp*pp=2 must equal the number of workers (4)" in r.stderr
