"""One worker of tools/bench/scaling.py: K timed training steps, then K timed runs of the
gradient all-reduce alone (the same collectives on gradient-shaped tensors); prints both."""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main() -> None:
    import mindspore as ms
    from mindformers_ds import config
    from mindformers_ds.parallel.explicit import GradReducer, distributed_world, init_context
    from mindformers_ds.train.setup import DistEnv, set_graph_mode
    from mindformers_ds.train.trainer import Trainer
    cfg_path, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sets = sys.argv[4:]
    cfg = config.load(cfg_path, sets)
    set_graph_mode()
    env = DistEnv(init_context(cfg.parallel)) if distributed_world() > 1 else DistEnv()
    tr = Trainer(cfg, env)
    tr.out = out
    from mindformers_ds.utils.logging import setup_logging
    setup_logging(None, "WARNING", console=False)
    tr._setup_data()
    tr._setup_model()
    step_times = []
    for s in range(steps):
        t0 = time.perf_counter()
        tr.train_step(s)
        step_times.append(time.perf_counter() - t0)
    comm = []
    if env.ctx is not None:
        params = tr.model.trainable_params()
        reducer = GradReducer(params, tr.table, env.ctx)
        grads = tuple(ms.Tensor(p.asnumpy()) for p in params)
        load = ms.Tensor([0.0], ms.float32)
        reducer(grads, load)  # compile
        for _ in range(steps):
            t0 = time.perf_counter()
            g, _ = reducer(grads, load)
            g[-1].asnumpy()
            comm.append(time.perf_counter() - t0)
    warm = step_times[2:] or step_times
    rec = {"rank": env.rank, "step": statistics.median(warm),
           "comm": statistics.median(comm) if comm else 0.0,
           "tokens": tr.loader.global_rows * cfg.data.seq_length}
    if env.rank == 0:
        with open(os.path.join(out, "scaling.json"), "w") as f:
            json.dump(rec, f)


if __name__ == "__main__":
    main()
