"""`selfsup report` and `selfsup compare`: the verdict follows the numbers, the page is one
self-contained file, and a real browser (headless Debian chromium) loads every image in it."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from selfsup.cli import main
from selfsup.report import build_compare, build_report, sweep_markdown, verdict


def stat(values):
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "n": len(arr), "values": list(map(float, arr))}


def point(budget, fraction, n, linear, supervised, knn=None):
    """A sweep point from per-seed accuracies (macro-F1 set equal to accuracy)."""
    knn = knn or linear
    summary = {
        "linear": {"accuracy": stat(linear), "macro_f1": stat(linear)},
        "knn": {"accuracy": stat(knn), "macro_f1": stat(knn)},
    }
    if supervised is not None:
        summary["supervised"] = {"accuracy": stat(supervised), "macro_f1": stat(supervised)}
        summary["linear_minus_supervised"] = stat(np.subtract(linear, supervised))
    return {"budget": budget, "fraction": fraction, "labels_per_class": None, "num_labels": n,
            "runs": [], "summary": summary}


def make_sweep(low_linear, low_sup, high_linear, high_sup):
    return {"seeds": 3, "num_test": 10000, "test_data": "cifar10/test", "chance_accuracy": 0.1,
            "val_fraction": 0.2, "baseline": {"minutes": 30.0, "steps": None},
            "points": [point("1%", 0.01, 500, low_linear, low_sup),
                       point("100%", 1.0, 50000, high_linear, high_sup)],
            "quality": {"std_ratio": 0.8, "effective_rank": 90.0, "uniformity": -3.2,
                        "collapsed": False}}


# ---------------------------------------------------------------------------------------------
# The verdict


def test_verdict_says_beats_with_the_gap_and_ratio():
    text = verdict(make_sweep([0.40, 0.42, 0.44], [0.30, 0.31, 0.35], [0.64, 0.64, 0.64],
                              [0.80, 0.80, 0.80]))
    # gap per seed 0.10, 0.11, 0.09: mean 10.0 points, std 1.0
    assert "With 1% of the labels (500 labels), SSL + linear probe beats supervised training " \
           "by 10.0 ± 1.0 points" in text
    assert "with all the labels (50,000 labels) it reaches 80% of supervised accuracy" in text
    assert "3 seeds" in text and "worse" in text  # 80% of supervised is worse, and says so


def test_verdict_says_worse_when_ssl_is_worse():
    text = verdict(make_sweep([0.30, 0.30, 0.30], [0.35, 0.36, 0.34], [0.9, 0.9, 0.9],
                              [0.85, 0.85, 0.85]))
    assert "SSL + linear probe is worse than supervised training by 5.0 ± 1.0 points" in text
    assert "beats" not in text
    assert "106% of supervised accuracy (90.0% vs 85.0%)" in text


def test_verdict_names_the_recipe_and_what_fine_tuning_adds():
    sweep = make_sweep([0.50, 0.52, 0.51], [0.30, 0.31, 0.32], [0.64] * 3, [0.80] * 3)
    sweep["method"], sweep["finetune_minutes"] = "vicreg", 5.0
    low, high = sweep["points"]
    # 1%: fine-tuning 55/56/57 against 40/42/41 from scratch; 100%: supervised is best.
    for p, tuned, scratch in ((low, [0.55, 0.56, 0.57], [0.40, 0.42, 0.41]),
                              (high, [0.78, 0.79, 0.77], [0.70, 0.70, 0.70])):
        p["summary"]["finetune"] = {"accuracy": stat(tuned)}
        p["summary"]["finetune_scratch"] = {"accuracy": stat(scratch)}
        p["summary"]["finetune_minus_scratch"] = stat(np.subtract(tuned, scratch))
        sup = p["summary"]["supervised"]["accuracy"]["values"]
        p["summary"]["finetune_minus_supervised"] = stat(np.subtract(tuned, sup))
    text = verdict(sweep)
    assert ("Fine-tuned end to end on the same labels with the same recipe for 5 minutes "
            "each, the pre-trained encoder against the same network from scratch beats it by "
            "15.0 ± 1.0 points with 1% of the labels (500 labels): 56.0% vs 41.0%") in text
    assert ("The recipe to take (the best mean test accuracy at each budget): with 1% of the "
            "labels (500 labels), fine-tune the vicreg "
            "encoder end to end: 56.0%, +25.0 ± 0.0 points over supervised") in text
    assert ("with all the labels (50,000 labels), train the network supervised from scratch "
            "(80.0%; the best with pre-training, fine-tune the vicreg encoder end to end, "
            "reaches 78.0%)") in text
    table = sweep_markdown(sweep)
    assert "fine-tune from scratch" in table and "fine-tune − scratch (points)" in table
    assert "15.0 ± 1.0" in table


def test_verdict_ties_spread_and_missing_baseline():
    tie = verdict(make_sweep([0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0.9, 0.9, 0.9], [0.9, 0.9, 0.9]))
    assert "matches supervised training" in tie and "100% of supervised" in tie
    noisy = verdict(make_sweep([0.40, 0.50, 0.45], [0.45, 0.40, 0.47], [0.9] * 3, [0.9] * 3))
    assert "within the seeds' spread" in noisy
    none = verdict(make_sweep([0.4, 0.4, 0.4], None, [0.6, 0.6, 0.6], None))
    assert "no supervised baseline" in none and "beats" not in none
    collapsed = make_sweep([0.4] * 3, [0.3] * 3, [0.6] * 3, [0.8] * 3)
    collapsed["quality"]["collapsed"] = True
    assert "Warning" in verdict(collapsed, quality=collapsed["quality"])
    assert "No evaluation yet" in verdict(None, None)
    single = {"linear": {"accuracy": 0.6}, "knn": {"accuracy": 0.5}, "num_train": 100,
              "supervised": {"accuracy": 0.8}}
    assert "trails the supervised baseline by 20.0 points" in verdict(None, single)


def test_sweep_markdown_rows_follow_the_numbers():
    sweep = make_sweep([0.40, 0.42, 0.44], [0.30, 0.31, 0.35], [0.64, 0.64, 0.64],
                       [0.80, 0.80, 0.80])
    sweep["points"][1]["summary"]["linear_over_supervised"] = stat([0.8, 0.8, 0.8])
    lines = sweep_markdown(sweep).splitlines()
    assert lines[0] == ("| labels | count | linear probe | kNN | supervised | "
                        "linear − supervised (points) | linear / supervised |")
    assert lines[2] == "| 1% | 500 | 42.0 ± 2.0 | 42.0 ± 2.0 | 32.0 ± 2.6 | 10.0 ± 1.0 | — |"
    assert lines[3] == ("| 100% | 50000 | 64.0 ± 0.0 | 64.0 ± 0.0 | 80.0 ± 0.0 | -16.0 ± 0.0 "
                        "| 0.800 ± 0.000 |")
    bare = sweep_markdown(make_sweep([0.4] * 3, None, [0.6] * 3, None))
    assert "supervised" not in bare  # no baseline, no baseline columns


# ---------------------------------------------------------------------------------------------
# A synthetic run directory: the page from what the run holds


def write_run(path, sweep=None, *, extras=True, linear=0.6):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(
        {"method": "simclr", "data": "digits", "encoder": "resnet_small", "batch_size": 64}))
    (path / "pretrain.json").write_text(json.dumps({
        "method": "simclr", "steps": 40, "train_seconds": 90.0, "images_per_s": 200.0,
        "final_loss": 4.1, "knn_monitor_accuracy": 0.9,
        "collapse": {"std_ratio": 0.7, "effective_rank": 40.0, "uniformity": -2.5}}))
    rows = ["step,train/loss,train/lr,monitor/knn_acc,train/images_per_s,collapse/std_ratio"]
    for step in range(1, 41):
        knn = f"{0.5 + step / 100:.3f}" if step % 10 == 0 else ""
        rows.append(f"{step},{5 - step / 20:.3f},{0.002 * step / 40:.5f},{knn},{190 + step},0.8")
    (path / "metrics.csv").write_text("\n".join(rows) + "\n")
    (path / "eval.json").write_text(json.dumps({
        "linear": {"accuracy": linear}, "knn": {"accuracy": 0.55},
        "supervised": {"accuracy": 0.7}, "num_train": 1437}))
    if sweep is not None:
        (path / "sweep.json").write_text(json.dumps(sweep))
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    features = rng.normal(size=(120, 16)) + 4 * np.eye(16)[labels]
    np.savez(path / "embeddings_sample.npz", features=features, labels=labels)
    if extras:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
        (path / "reconstruction.png").write_bytes(buffer.getvalue())
        (path / "samples.txt").write_text("ROMEO: <what> & so on")
        (path / "zero_shot.json").write_text(json.dumps({"accuracy": 0.42, "classes": 10}))
    return path


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    sweep = make_sweep([0.40, 0.42, 0.44], [0.30, 0.31, 0.35], [0.62] * 3, [0.80] * 3)
    run = write_run(tmp_path_factory.mktemp("report") / "run", sweep)
    build_report(run)
    return run


def test_report_is_one_self_contained_file(report_run):
    page = (report_run / "report.html").read_text()
    assert 'id="verdict"' in page and "beats supervised training by 10.0 ± 1.0 points" in page
    sources = re.findall(r'<img[^>]*src="([^"]+)"', page)
    # label efficiency, training curves, embedding map, reconstruction
    assert len(sources) == 4
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert Image.open(io.BytesIO(png)).size[0] > 10
    assert not re.search(r'(src|href)="(https?:|file:|/)', page)  # nothing outside the file
    for section in ("Label efficiency", "Training curves", "Label-free metrics", "Embedding map",
                    "Reconstructions", "Generated samples", "Zero-shot results", "Config"):
        assert f"<h2>{section}</h2>" in page
    assert "ROMEO: &lt;what&gt; &amp; so on" in page  # escaped


def test_report_skips_what_the_run_lacks(tmp_path):
    run = write_run(tmp_path / "bare", None, extras=False)
    (run / "embeddings_sample.npz").unlink()
    page = build_report(run, embedding_map=False).read_text()
    assert "one seed, no error bars" in page  # the verdict falls back to eval.json
    for section in ("Reconstructions", "Generated samples", "Zero-shot results", "Embedding map",
                    "Label efficiency"):
        assert f"<h2>{section}</h2>" not in page


def test_compare_table_and_chart(tmp_path, monkeypatch, capsys):
    a = write_run(tmp_path / "a", make_sweep([0.4] * 3, [0.3] * 3, [0.6] * 3, [0.8] * 3))
    b = write_run(tmp_path / "b", None, extras=False, linear=0.7)
    out = build_compare([a, b], tmp_path / "cmp.html")
    page = out.read_text()
    assert page.count("<img") == 1 and "<table>" in page
    assert "sweep, 100% labels" in page and "eval.json" in page
    monkeypatch.setattr(sys, "argv", ["selfsup", "compare", str(a), str(b), "--out",
                                      str(tmp_path / "cli.html")])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0 and (tmp_path / "cli.html").is_file()
    assert "0.7000" in capsys.readouterr().out


def test_report_cli_errors_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["selfsup", "report", str(tmp_path / "nope")])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2 and "not a selfsup run" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# In a real browser


def chromium() -> str | None:
    """Debian's chromium, installed with apt-get when absent and we are root; else None."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        for command in (install, ["apt-get", "update", "-q"], install):
            if shutil.which("chromium"):
                break
            subprocess.run(command, capture_output=True, timeout=900, check=False)
        found = shutil.which("chromium")
    return found


@pytest.fixture(scope="module")
def browser():
    path = chromium()
    if path is None:
        pytest.skip("chromium is not installed and could not be installed")
    return path


def headless(browser, *args, timeout=120):
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--disable-dev-shm-usage", "--no-first-run", "--virtual-time-budget=10000"]
    return subprocess.run([*flags, *args], capture_output=True, text=True, timeout=timeout)


def test_browser_loads_every_image_and_shows_the_verdict(report_run, browser, tmp_path):
    url = (report_run / "report.html").resolve().as_uri()
    dom = headless(browser, "--dump-dom", url).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    assert 'data-images="ok"' in body.group(0), body.group(0)
    assert 'data-images-total="4"' in body.group(0) and 'data-images-broken="0"' in body.group(0)
    assert "beats supervised training by 10.0 ± 1.0 points" in dom

    shot = tmp_path / "report.png"
    headless(browser, f"--screenshot={shot}", "--window-size=1200,2400", url)
    image = Image.open(shot)
    assert image.size == (1200, 2400)
    pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # text and figures, not a blank page


def test_browser_check_catches_a_broken_image(report_run, browser, tmp_path):
    page = (report_run / "report.html").read_text()
    broken = page.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1)
    assert broken != page
    (tmp_path / "broken.html").write_text(broken)
    dom = headless(browser, "--dump-dom", (tmp_path / "broken.html").as_uri()).stdout
    assert 'data-images="broken"' in dom and 'data-images-broken="1"' in dom


def test_sweep_table_writes_counts_as_counts():
    """The label count is a mean over seeds, a float in sweep.json: 50,000, never 5e+04."""
    from selfsup.report.html import sweep_table

    sweep = make_sweep([0.4] * 3, [0.3] * 3, [0.6] * 3, [0.8] * 3)
    sweep["points"][1]["num_labels"] = 50000.0
    sweep["points"][0]["num_labels"] = 12.5
    page = sweep_table(sweep)
    assert "50,000" in page and "12.5" in page and "e+04" not in page
