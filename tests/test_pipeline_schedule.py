"""Pipeline timetables (no MindSpore): every op runs once, after its input exists, and the
simulated bubble equals the schedule's theory; bad pipeline layouts are refused in one line."""
from __future__ import annotations

import os

import pytest

from conftest import ROOT
from mindformers_ds import config as config_mod
from mindformers_ds.errors import ConfigError
from mindformers_ds.parallel.pipeline_schedule import (build_timetable, theory_bubble_1f1b,
                                                       theory_bubble_interleaved)


@pytest.mark.parametrize("p,m,v", [(2, 2, 1), (2, 4, 1), (4, 8, 1), (3, 5, 1), (2, 2, 2), (2, 4, 2), (4, 8, 2),
                                   (2, 4, 3)])
def test_timetable_is_complete_ordered_and_has_the_theoretical_bubble(p, m, v):
    table = build_timetable("1f1b" if v == 1 else "interleaved", p, m, v)
    when = {}
    for t, row in enumerate(table.ticks):
        for s, op in enumerate(row):
            if op is not None:
                assert op.virtual % p == s
                when[(op.kind, op.micro, op.virtual)] = t
    last = p * v - 1
    assert len(when) == 2 * m * p * v
    for (kind, mb, vs), t in when.items():
        if kind == "F" and vs > 0:
            assert when[("F", mb, vs - 1)] < t
        if kind == "B":
            assert when[("F", mb, vs)] < t
            if vs < last:
                assert when[("B", mb, vs + 1)] < t
    theory = theory_bubble_1f1b(p, m) if v == 1 else theory_bubble_interleaved(p, m, v)
    for s in range(p):
        assert table.idle_fraction(s) == pytest.approx(theory)


def test_1f1b_keeps_at_most_p_minus_stage_micro_batches_in_flight():
    p, m = 4, 8
    table = build_timetable("1f1b", p, m)
    for s in range(p):
        live, peak = 0, 0
        for _, op in table.ops_of(s):
            live += 1 if op.kind == "F" else -1
            peak = max(peak, live)
        assert peak == p - s


CFG = os.path.join(ROOT, "configs/deepseek_v3/parallel_tiny.yaml")


@pytest.mark.parametrize("sets,field", [
    (["parallel.pp=2", "parallel.micro_batches=1"], "parallel.micro_batches"),
    (["parallel.pp=2", "parallel.micro_batches=2", "parallel.virtual_stages=3"], "parallel.virtual_stages"),
    (["parallel.virtual_stages=2"], "parallel.virtual_stages"),
    (["model.num_hidden_layers=4", "parallel.pp=2", "parallel.micro_batches=3", "parallel.virtual_stages=2"],
     "parallel.micro_batches"),
])
def test_bad_pipeline_layouts_are_refused_in_one_line(sets, field):
    with pytest.raises(ConfigError) as e:
        config_mod.load(CFG, overrides=sets)
    msg = str(e.value)
    assert field in msg and "\n" not in msg


def test_evaluation_under_pipeline_stages_is_refused_naming_the_field(tmp_path):
    from mindformers_ds.parallel.executors import ExplicitExecutor
    cfg = config_mod.load(CFG, overrides=["parallel.pp=2", "parallel.micro_batches=2", "train.eval_every=2",
                                                 f"train.output_dir={tmp_path}"])
    with pytest.raises(ConfigError) as e:
        ExplicitExecutor().check(cfg, 2)
    assert "train.eval_every" in str(e.value) and "mfds eval" in str(e.value)


def test_optimizer_sharding_without_data_parallelism_is_a_one_line_warning(tmp_path, caplog):
    import logging
    from mindformers_ds.parallel.executors import ExplicitExecutor
    cfg = config_mod.load(CFG, overrides=["parallel.tp=2", "parallel.optimizer_shard=true",
                                          f"train.output_dir={tmp_path}"])
    with caplog.at_level(logging.WARNING, logger="mindformers_ds.parallel"):
        ExplicitExecutor().check(cfg, 2)   # not refused: the state stays whole
    lines = [r.getMessage() for r in caplog.records if "optimizer_shard" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("--set: parallel.optimizer_shard=true with parallel.dp=1 is a no-op")
    lora = config_mod.load(os.path.join(ROOT, "configs/deepseek_v3/finetune_lora_tiny.yaml"),
                           overrides=["parallel.dp=2", "parallel.optimizer_shard=true", f"train.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^--set: parallel.optimizer_shard=true with lora.enabled"):
        ExplicitExecutor().check(lora, 2)


def test_sequence_parallel_layouts_are_checked_in_one_line(tmp_path, caplog):
    """The sequence must cut into tp equal parts (a one-line error naming the field); without
    tensor parallelism the switch is a one-line no-op warning."""
    import logging
    from mindformers_ds.parallel.executors import ExplicitExecutor
    with pytest.raises(ConfigError) as e:
        config_mod.load(CFG, overrides=["parallel.tp=2", "parallel.sequence_parallel=true", "data.seq_length=63"])
    assert str(e.value) == ("--set: parallel.sequence_parallel cuts data.seq_length=63 into parallel.tp=2 parts: "
                            "it must be a multiple of parallel.tp")
    cfg = config_mod.load(CFG, overrides=["parallel.dp=2", "parallel.sequence_parallel=true",
                                          f"train.output_dir={tmp_path}"])
    with caplog.at_level(logging.WARNING, logger="mindformers_ds.parallel"):
        ExplicitExecutor().check(cfg, 2)
    lines = [r.getMessage() for r in caplog.records if "sequence_parallel" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("--set: parallel.sequence_parallel=true with parallel.tp=1 is a no-op")
    generating = config_mod.load(CFG, overrides=["parallel.tp=2", "parallel.sequence_parallel=true",
                                                 "train.exact_match_samples=4", f"train.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^--set: train.exact_match_samples=4 with parallel.sequence_parallel: "):
        ExplicitExecutor().check(generating, 2)


def test_zero_rows_are_one_more_split_of_the_layout_table():
    """A moment's ZeRO rows (dim 0 over dp, after the parameter's own tp split) cut and reassemble
    exactly: every rank's rows, concatenated in rank order, are the moment."""
    import numpy as np
    from mindformers_ds.parallel.layout import ParamLayout
    from mindformers_ds.parallel.zero import optimizer_table
    table = {"w": ParamLayout("w", (8, 6), "linear_col", {"tp": 0}), "n": ParamLayout("n", (6,), "norm", {})}
    opt = optimizer_table(table, {"w": "dp", "n": "dp"})
    assert opt["w"].split == {"tp": 0, "dp": 0} and opt["n"].split == {"dp": 0} and table["w"].split == {"tp": 0}
    full = np.arange(48, dtype=np.float32).reshape(8, 6)
    sizes = {"tp": 2, "dp": 2}
    pieces = {(t, d): opt["w"].shard(full, sizes, {"tp": t, "dp": d}) for t in range(2) for d in range(2)}
    assert pieces[(1, 0)].shape == (2, 6) and (pieces[(1, 0)] == full[4:6]).all()   # tp piece 1, its first half
    np.testing.assert_array_equal(opt["w"].unshard(pieces, sizes), full)


def test_recompute_lists_per_layer_and_per_stage_cover_the_mtp_modules():
    from mindformers_ds.parallel.recompute import layer_recompute
    stages = [0, 0, 0, 1, 1]          # 4 decoder layers (3 + 1) and one MTP module on the last stage
    per_layer = [True, False, False, True]
    assert [layer_recompute(per_layer, stages, i, 4) for i in range(5)] == [True, False, False, True, True]
    per_stage = [False, True]
    assert [layer_recompute(per_stage, stages, i, 4) for i in range(5)] == [False, False, False, True, True]
    assert [layer_recompute(True, stages, i, 4) for i in range(5)] == [True] * 5


@pytest.mark.parametrize("p,m,v", [(2, 4, 1), (4, 8, 1), (2, 4, 2), (4, 8, 2)])
def test_every_op_finds_its_input_handed_over_by_its_neighbour(p, m, v):
    """Replaying the timetable with tick_moves' hand-overs (as each stage receives them): every
    forward past the first virtual stage and every backward before the last finds its input on
    its own stage, delivered by the neighbour, at an earlier tick."""
    from mindformers_ds.parallel.pipeline_handover import ACTIVATION, tick_moves
    table = build_timetable("1f1b" if v == 1 else "interleaved", p, m, v)
    last = p * v - 1
    inbox = {s: set() for s in range(p)}
    for row in table.ticks:
        for s, op in enumerate(row):
            if op is None:
                continue
            if op.kind == "F" and op.virtual > 0:
                assert ("act", op.micro, op.virtual) in inbox[s]
            if op.kind == "B" and op.virtual < last:
                assert ("grad", op.micro, op.virtual) in inbox[s]
        for mv in tick_moves(row, p, last):   # delivered at the end of the tick
            assert mv.dst == (mv.src + (1 if mv.kind == ACTIVATION else -1)) % p and mv.virtual % p == mv.dst
            inbox[mv.dst].add(("act" if mv.kind == ACTIVATION else "grad", mv.micro, mv.virtual))


def test_point_to_point_is_native_where_the_backend_has_it():
    from types import SimpleNamespace
    from mindformers_ds.parallel.pipeline_handover import AllReduceHandover, SendReceiveHandover, make_handover
    ctx = SimpleNamespace(device="Ascend", stage=1, pp=2, groups={"pp": "pp_0_2"})
    assert isinstance(make_handover(ctx, None), SendReceiveHandover)     # HCCL: ops.Send / ops.Receive
    assert isinstance(make_handover(SimpleNamespace(**{**vars(ctx), "device": "CPU"}), None), AllReduceHandover)
