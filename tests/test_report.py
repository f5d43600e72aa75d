"""`mfds report`: the page renders in headless Chromium with every figure decoded (the page
counts them itself), a screenshot is saved and is not blank; bad run directories get one line."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from mindformers_ds.cli import main as mfds

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
EXPECTED = ["loss", "lr", "throughput", "time_split", "memory", "expert_load", "imbalance", "router_bias"]


def _chromium(*args):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120)


def test_report_files(finished_run, capsys):
    cfg, _ = finished_run
    assert mfds(["report", cfg.train.output_dir]) == 0
    assert "8 figures" in capsys.readouterr().out
    out = os.path.join(cfg.train.output_dir, "report")
    for name in EXPECTED:
        with open(os.path.join(out, f"{name}.png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    page = open(os.path.join(out, "index.html")).read()
    assert page.count("data:image/png;base64,") == len(EXPECTED)  # self-contained: no external files
    assert "src='http" not in page and "Profiled operators" in page  # the run had a profile window


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (`make test` installs Debian's "
                    "chromium with apt-get; it could not be installed here)")
def test_report_renders_in_headless_chromium(finished_run, tmp_path):
    import matplotlib.image as mpimg
    cfg, _ = finished_run
    assert mfds(["report", cfg.train.output_dir]) == 0
    url = "file://" + os.path.join(cfg.train.output_dir, "report", "index.html")
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", url)
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stderr[-2000:]
    assert f'data-figures="{len(EXPECTED)}"' in body.group(0)
    assert f'data-figures-loaded="{len(EXPECTED)}"' in body.group(0), body.group(0)  # all decoded by the browser
    for name in EXPECTED:
        assert f"id=\"fig-{name}\"" in dom.stdout
    shot = os.path.join(cfg.train.output_dir, "report", "screenshot.png")
    r = _chromium("--window-size=1000,5200", f"--screenshot={shot}", url)
    assert os.path.isfile(shot), r.stderr[-2000:]
    image = mpimg.imread(shot)
    assert image.shape[0] == 5200 and image.shape[1] == 1000
    # the figures are there: far from a blank page, with many distinct colours
    assert image[..., :3].std() > 0.1
    assert len(np.unique((image[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 500
    shutil.copy(shot, tmp_path / "screenshot.png")


def test_report_errors_name_the_input(tmp_path, capsys):
    assert mfds(["report", str(tmp_path)]) == 2
    assert f"{tmp_path}: no metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"type": "eval", "step": 1, "eval_loss": 2.0}\n')
    assert mfds(["report", str(tmp_path)]) == 2
    assert "no training-step records" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0\n')
    assert mfds(["report", str(tmp_path)]) == 2
    assert "metrics.jsonl: unreadable metrics" in capsys.readouterr().err
