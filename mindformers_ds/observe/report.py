"""`mfds report RUN_DIR`: one self-contained HTML page (figures embedded as PNG data) plus the
PNG files, in RUN_DIR/report/. It reads metrics.jsonl, summary.json and config.yaml.

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


def _page(title: str, rows: List[tuple], figures: List[tuple], top_ops: Optional[List[Dict]]) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}"
             "figure{margin:1.5em 0}figcaption{font-weight:bold;margin-bottom:.4em}img{max-width:100%}</style>",
             f"</head><body data-figures='{len(figures)}'><h1>{html.escape(title)}</h1><table>"]
    parts += [f"<tr><th>{html.escape(str(k))}</th><td>{v}</td></tr>" for k, v in rows]
    parts.append("</table>")
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


def build_report(run_dir: str, out_dir: Optional[str] = None) -> Dict:
    """Write RUN_DIR/report/index.html and one PNG per figure; returns the paths and figure names."""
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
    figures = []
    for name, caption, draw in FIGURES:
        png = draw(steps, evals)
        if png is not None:
            atomic_write_bytes(os.path.join(out_dir, f"{name}.png"), png)
            figures.append((name, caption, png))
    title = f"mindformers_ds run: {os.path.basename(os.path.abspath(run_dir))}"
    page = _page(title, _summary_rows(summary, steps), figures, summary.get("profile_top_ops"))
    index = os.path.join(out_dir, "index.html")
    atomic_write_text(index, page)
    return {"html": index, "figures": [f[0] for f in figures], "dir": out_dir}
