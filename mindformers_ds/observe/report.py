"""`mfds report RUN_DIR [NODE_DIR ...]`: one self-contained HTML page (figures embedded as PNG
data) plus the PNG files, in RUN_DIR/report/. It reads metrics.jsonl, summary.json and
config.yaml; for a multi-rank run also every rank's metrics, straggler windows and hang reports,
from RUN_DIR and the other nodes' directories, merged by rank (rank_report.py).

The page marks itself when rendered: a script counts the figures the browser decoded and sets
`data-figures-loaded` on <body>, which the screenshot test reads back from headless Chromium.
"""
from __future__ import annotations

import base64
import html
import json
import os
from typing import Dict, List, Optional

from ..errors import ReportError
from ..utils.io import atomic_write_bytes, atomic_write_text
from ..utils.logging import read_metrics
from . import rank_report
from .figures import FIGURES




def _summary_rows(summary: Dict, steps: List[Dict]) -> List[tuple]:
    def fmt(v, spec="{:.4g}"):
        return spec.format(v) if isinstance(v, (int, float)) else html.escape(str(v))
    # the run's step count, not the number of logged records (one per logging.log_every steps)
    rows = [("steps", max(r["step"] for r in steps)), ("logged steps", len(steps))]
    for key, label, spec in (("n_params", "parameters", "{:,}"), ("n_trainable", "trainable", "{:,}"),
                             ("first_loss", "first loss", "{:.4f}"), ("final_loss", "final loss", "{:.4f}"),
                             ("eval_loss", "eval loss", "{:.4f}"), ("exact_match_before", "exact match before", "{:.1%}"),
                             ("exact_match_after", "exact match after", "{:.1%}"),
                             ("mean_tokens_per_sec", "tokens/s (steady state)", "{:,.0f}"),
                             ("mean_mfu", "MFU (steady state)", "{:.2%}"), ("peak_rss_mb", "peak RSS (MB)", "{:,.0f}"),
                             ("checkpoint", "checkpoint", "{}")):
        if summary.get(key) is not None:
            rows.append((label, fmt(summary[key], spec)))
    return rows


def _incident_tables(stragglers: List[Dict], hangs: List[Dict]) -> List[str]:
    parts = []
    if stragglers:
        parts.append("<h2>Stragglers</h2><table><tr><th>steps</th><th>rank</th><th>own s/step</th><th>peers' median</th>"
                     "<th>phase</th><th>phase s</th><th>peers' median</th></tr>")
        parts += [f"<tr><td>{s['window']}</td><td>rank {s['rank']}</td><td>{s['own_s']:.3f}</td><td>{s['median_s']:.3f}"
                  f"</td><td>{html.escape(s['phase'])}</td><td>{s['phase_s']:.3f}</td><td>{s['phase_median_s']:.3f}</td>"
                  "</tr>" for s in stragglers]
        parts.append("</table>")
    if hangs:
        parts.append("<h2>Hangs</h2><table><tr><th>rank</th><th>step</th><th>phase</th><th>waits in</th><th>seconds</th>"
                     "<th>report</th></tr>")
        parts += [f"<tr><td>rank {h['rank']}</td><td>{h['step']}</td><td>{html.escape(h['phase'])}</td>"
                  f"<td>{html.escape(h['waits_in'] or '-')}</td><td>{h['seconds']:.0f}</td>"
                  f"<td>{html.escape(h['file'])}</td></tr>" for h in hangs]
        parts.append("</table>")
    return parts


def _collective_tables(inventories: Dict[int, Dict], profiles: Dict[int, Dict], slow: List[Dict]) -> List[str]:
    """Ranks x collectives: count and MB per step, from the compiled graphs; and the profiled
    kernel time per step of each rank, compute against collectives (the ranks named slow)."""
    parts = []
    kinds = sorted({k for rec in inventories.values() for k in rec["per_step"]})
    if kinds:
        parts.append("<h2>Collectives per step</h2><p>From the graphs MindSpore compiled (count / MB per step)."
                     "</p><table><tr><th>rank</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in kinds) + "</tr>")
        for rank, rec in inventories.items():
            per_step = rec["per_step"]
            cells = [f"{per_step[k]['count']} / {per_step[k]['bytes'] / 1e6:.3f}" if k in per_step else "-"
                     for k in kinds]
            parts.append(f"<tr><td>rank {rank}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    if profiles:
        named = {s["rank"] for s in slow}
        parts.append("<h2>Profiled kernels per step</h2><table><tr><th>rank</th><th>compute ms</th>"
                     "<th>collectives ms</th><th>slow inside the graph</th></tr>")
        parts += [f"<tr><td>rank {rank}</td><td>{p['compute_ms']:.1f}</td><td>{sum(p['collective_ms'].values()):.1f}"
                  f"</td><td>{'yes' if rank in named else ''}</td></tr>" for rank, p in profiles.items()]
        parts.append("</table>")
    return parts


def _page(title: str, rows: List[tuple], figures: List[tuple], top_ops: Optional[List[Dict]],
          incidents: List[str]) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}"
             "figure{margin:1.5em 0}figcaption{font-weight:bold;margin-bottom:.4em}img{max-width:100%}</style>",
             f"</head><body data-figures='{len(figures)}'><h1>{html.escape(title)}</h1><table>"]
    parts += [f"<tr><th>{html.escape(str(k))}</th><td>{v}</td></tr>" for k, v in rows]
    parts.append("</table>")
    parts += incidents
    if top_ops:
        parts.append("<h2>Profiled operators</h2><table><tr><th>op</th><th>share</th><th>calls</th><th>ms each</th></tr>")
        parts += [f"<tr><td>{html.escape(r['op_type'])}</td><td>{r['share']:.1%}</td><td>{r['calls']}</td>"
                  f"<td>{r['avg_ms']:.3f}</td></tr>" for r in top_ops[:10]]
        parts.append("</table>")
    for name, caption, png in figures:
        data = base64.b64encode(png).decode()
        parts.append(f"<figure id='fig-{name}'><figcaption>{html.escape(caption)}</figcaption>"
                     f"<img class='figure' alt='{html.escape(caption)}' src='data:image/png;base64,{data}'></figure>")
    parts.append("<script>window.addEventListener('load',function(){var n=0;"
                 "document.querySelectorAll('img.figure').forEach(function(i){if(i.complete&&i.naturalWidth>0)n++;});"
                 "document.body.setAttribute('data-figures-loaded',String(n));});</script></body></html>")
    return "\n".join(parts)


def build_report(run_dir: str, out_dir: Optional[str] = None, node_dirs: List[str] = ()) -> Dict:
    """Write RUN_DIR/report/index.html and one PNG per figure; returns the paths and figure names.
    `node_dirs`: the other nodes' run directories of a multi-node run (their ranks' metrics)."""
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(metrics_path):
        raise ReportError(f"{run_dir}: no metrics.jsonl (expected the output_dir of an `mfds train` run)")
    try:
        records = read_metrics(metrics_path)
    except (ValueError, OSError) as e:
        raise ReportError(f"{metrics_path}: unreadable metrics ({e})") from None
    steps = [r for r in records if "loss" in r and r.get("type") is None]
    evals = [r for r in records if r.get("type") == "eval"]
    if not steps:
        raise ReportError(f"{metrics_path}: no training-step records")
    summary: Dict = {}
    if os.path.isfile(os.path.join(run_dir, "summary.json")):
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
    out_dir = out_dir or os.path.join(run_dir, "report")
    dirs = [run_dir, *node_dirs]
    for d in node_dirs:
        if not os.path.isdir(d):
            raise ReportError(f"{d}: not a directory (expected another node's run directory)")
    ranks = rank_report.rank_records(dirs)
    drawn = [(name, caption, draw(steps, evals)) for name, caption, draw in FIGURES]
    drawn += [("rank_split", "Where each rank's step goes", rank_report.rank_split(ranks)),
              ("rank_timeline", "Each rank's own time per step", rank_report.rank_timeline(ranks)),
              ("expert_load_per_rank", "Routed tokens per expert-parallel rank",
               rank_report.expert_load_per_rank(steps, _expert_parallel(run_dir)))]
    figures = []
    for name, caption, png in drawn:
        if png is not None:
            atomic_write_bytes(os.path.join(out_dir, f"{name}.png"), png)
            figures.append((name, caption, png))
    title = f"mindformers_ds run: {os.path.basename(os.path.abspath(run_dir))}"
    stragglers, hangs = rank_report.incidents(dirs, records)
    page = _page(title, _summary_rows(summary, steps), figures, summary.get("profile_top_ops"),
                 _incident_tables(stragglers, hangs) + _collective_tables(
                     rank_report.per_rank(dirs, "collectives"), rank_report.per_rank(dirs, "profile"),
                     [s for r in records if r.get("type") == "graph_stragglers" for s in r["stragglers"]]))
    index = os.path.join(out_dir, "index.html")
    atomic_write_text(index, page)
    return {"html": index, "figures": [f[0] for f in figures], "dir": out_dir, "ranks": sorted(ranks),
            "stragglers": len(stragglers), "hangs": len(hangs)}


def _expert_parallel(run_dir: str) -> int:
    """parallel.ep of the run (its config.yaml), 1 when it says none."""
    import yaml
    try:
        with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
        return int((cfg.get("parallel") or {}).get("ep", 1))
    except (OSError, ValueError, TypeError, yaml.YAMLError):
        return 1
