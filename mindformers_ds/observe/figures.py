"""The report's figures, drawn with matplotlib (Agg, no display) from a run's metrics records.

Each function takes the train-step records (and eval records) and returns PNG bytes, or None
when the run has nothing to show for it (a dense model has no expert load).
"""
from __future__ import annotations

import io
from typing import Dict, List, Optional

import numpy as np

Records = List[Dict]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _steps(records: Records, key: str):
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return (np.array([p[0] for p in pts]), np.array([p[1] for p in pts], float)) if pts else (None, None)


def loss_curves(steps: Records, evals: Records) -> Optional[bytes]:
    x, y = _steps(steps, "loss")
    if x is None:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(x, y, label="train loss", lw=1.2)
    mx, my = _steps(steps, "mtp_loss")
    if mx is not None and np.any(my):
        ax.plot(mx, my, label="MTP loss", lw=1.0, alpha=0.7)
    ex, ey = _steps(evals, "eval_loss")
    if ex is not None:
        ax.plot(ex, ey, "o-", label="eval loss", ms=5)
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.grid(alpha=0.3), ax.legend()
    ax.set_title("Loss")
    return _png(fig)


def learning_rate(steps: Records) -> Optional[bytes]:
    x, y = _steps(steps, "lr")
    if x is None:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.plot(x, y, color="tab:green")
    ax.set_xlabel("step"), ax.set_ylabel("learning rate"), ax.grid(alpha=0.3)
    ax.set_title("Learning rate")
    return _png(fig)


def throughput(steps: Records) -> Optional[bytes]:
    warm = [r for r in steps if not r.get("includes_compile")]
    x, y = _steps(warm, "tokens_per_sec")
    if x is None:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(x, y, color="tab:blue", label="tokens/s")
    ax.set_xlabel("step"), ax.set_ylabel("tokens / s"), ax.grid(alpha=0.3)
    mx, my = _steps(warm, "mfu")
    if mx is not None:
        ax2 = ax.twinx()
        ax2.plot(mx, 100 * my, color="tab:orange", alpha=0.7, label="MFU")
        ax2.set_ylabel("MFU (%)")
    ax.set_title("Throughput and MFU (the compiling first step left out)")
    return _png(fig)


def time_split(steps: Records) -> Optional[bytes]:
    warm = [r for r in steps if not r.get("includes_compile") and "time_compute" in r]
    if not warm:
        return None
    plt = _plt()
    x = np.array([r["step"] for r in warm])
    parts = [("time_data", "data"), ("time_compute", "forward+backward+optimizer"), ("time_host", "host overhead")]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.stackplot(x, *[1e3 * np.array([r[k] for r in warm]) for k, _ in parts], labels=[n for _, n in parts],
                 alpha=0.85)
    ax.set_xlabel("step"), ax.set_ylabel("ms per step"), ax.grid(alpha=0.3), ax.legend(loc="upper right")
    ax.set_title("Where a step's time goes")
    return _png(fig)


def memory(steps: Records) -> Optional[bytes]:
    x, y = _steps(steps, "peak_rss_mb")
    if x is None:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.plot(x, y, color="tab:red", label="peak RSS (host)")
    dx, dy = _steps(steps, "device_peak_mb")
    if dx is not None:
        ax.plot(dx, dy, color="tab:purple", label="peak device memory")
    ax.set_xlabel("step"), ax.set_ylabel("MB"), ax.grid(alpha=0.3), ax.legend()
    ax.set_title("Peak memory")
    return _png(fig)


def _stack(steps: Records, key: str):
    rows = [r for r in steps if key in r]
    if not rows:
        return None, None
    return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows], float)  # [T, layers, E]


def expert_load_heatmap(steps: Records) -> Optional[bytes]:
    """Rows: (MoE layer, expert); columns: steps; colour: the expert's load over the layer's mean."""
    x, load = _stack(steps, "expert_load")
    if x is None:
        return None
    t, n_layers, e = load.shape
    share = load / np.maximum(load.mean(-1, keepdims=True), 1e-9)
    image = share.transpose(1, 2, 0).reshape(n_layers * e, t)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, min(2 + 0.12 * n_layers * e, 12)))
    im = ax.imshow(image, aspect="auto", cmap="magma", interpolation="nearest",
                   extent=(x[0] - 0.5, x[-1] + 0.5, n_layers * e - 0.5, -0.5))
    for layer in range(1, n_layers):
        ax.axhline(layer * e - 0.5, color="white", lw=0.8)
    ax.set_yticks([layer * e + (e - 1) / 2 for layer in range(n_layers)])
    ax.set_yticklabels([f"MoE layer {layer}" for layer in range(n_layers)])
    ax.set_xlabel("step")
    fig.colorbar(im, ax=ax, label="tokens / mean tokens per expert")
    ax.set_title("Expert load over steps (1.0 = perfectly balanced)")
    return _png(fig)


def imbalance(steps: Records) -> Optional[bytes]:
    x, imb = _stack(steps, "imbalance")
    if x is None:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for layer in range(imb.shape[1]):
        ax.plot(x, imb[:, layer], lw=1, label=f"MoE layer {layer}")
    ax.axhline(1.0, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("step"), ax.set_ylabel("max / mean load"), ax.grid(alpha=0.3)
    if imb.shape[1] <= 8:
        ax.legend(fontsize=8)
    ax.set_title("Expert imbalance per MoE layer")
    return _png(fig)


def router_bias(steps: Records, max_layers: int = 8) -> Optional[bytes]:
    """One panel per MoE layer (at most `max_layers`, evenly spaced): every expert's bias."""
    x, bias = _stack(steps, "router_bias")
    if x is None:
        return None
    n_layers = bias.shape[1]
    shown = sorted(set(np.linspace(0, n_layers - 1, min(n_layers, max_layers)).round().astype(int)))
    plt = _plt()
    cols = min(len(shown), 2)
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7, 2.4 * rows), squeeze=False, sharex=True)
    for ax, layer in zip(axes.flat, shown):
        ax.plot(x, bias[:, layer, :], lw=0.8)
        ax.set_title(f"MoE layer {layer}", fontsize=9), ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle("Router correction bias per expert (aux-loss-free balancing)")
    return _png(fig)


def indexer_training(steps: Records) -> Optional[bytes]:
    """While the indexers train (train.indexer_stage): per layer, the share of the dense attention
    mass their top-k holds (recall@k) and the KL of their scores against the attention."""
    rows = [r for r in steps if r.get("indexer_layers")]
    if not rows:
        return None
    x = np.array([r["step"] for r in rows])
    recall, kl = np.array([r["indexer_recall"] for r in rows], float), np.array([r["indexer_kl"] for r in rows], float)
    plt = _plt()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.2), sharex=True)
    for i, layer in enumerate(rows[-1]["indexer_layers"]):
        top.plot(x, recall[:, i], lw=1, label=f"layer {layer}")
        bottom.plot(x, kl[:, i], lw=1)
    top.set_ylabel("recall@k of dense mass"), top.set_ylim(0, 1.02), top.grid(alpha=0.3)
    if recall.shape[1] <= 8:
        top.legend(fontsize=8)
    bottom.set_ylabel("KL(attention || indexer)"), bottom.set_xlabel("step"), bottom.grid(alpha=0.3)
    top.set_title("Indexer training per sparse layer")
    return _png(fig)


FIGURES = [
    ("loss", "Training, MTP and evaluation loss", lambda s, e: loss_curves(s, e)),
    ("lr", "Learning-rate schedule", lambda s, e: learning_rate(s)),
    ("throughput", "Tokens per second and model FLOPs utilisation", lambda s, e: throughput(s)),
    ("time_split", "Step time: data, compute and host overhead", lambda s, e: time_split(s)),
    ("memory", "Peak memory", lambda s, e: memory(s)),
    ("expert_load", "Expert load heat map (layer x expert over steps)", lambda s, e: expert_load_heatmap(s)),
    ("imbalance", "Expert imbalance", lambda s, e: imbalance(s)),
    ("router_bias", "Router bias trajectories", lambda s, e: router_bias(s)),
    ("indexer", "Indexer recall@k and KL per sparse layer", lambda s, e: indexer_training(s)),
]
