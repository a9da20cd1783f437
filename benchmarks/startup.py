"""Start-up wall time of the command line: `selfsup --help`, `selfsup pretrain --help` and an
argument error (`selfsup pretrain simclr --bogus`), issue 25.

Each command runs as its own process, ``--repeats`` times, each run right after a reference
process (``python -c pass``, the interpreter's own start-up), so that both see the same machine
load; the report gives medians and the load average (os.getloadavg) before and after. With
``--baseline REF`` the same commands also run from the source tree of git revision REF
(``git archive REF selfsup``, run as ``python -m selfsup`` inside it), e.g. the
commit before the CLI imported its verbs lazily.

    .venv/bin/python benchmarks/startup.py                     # ~10 s
    .venv/bin/python benchmarks/startup.py --baseline 3b1b582  # ~2.5 min: before and after

Writes benchmarks/results/startup.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

#: What is timed: a label, the arguments after `selfsup`, the exit code it must end with.
COMMANDS: list[tuple[str, list[str], int]] = [
    ("selfsup --help", ["--help"], 0),
    ("selfsup pretrain --help", ["pretrain", "--help"], 0),
    ("selfsup pretrain simclr --bogus", ["pretrain", "simclr", "--bogus"], 2),
]


def timed(command: list[str], expected: int, env: dict[str, str], cwd: Path = REPO) -> float:
    """Wall seconds of one run of ``command`` (output discarded); it must exit ``expected``."""
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                          cwd=cwd, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != expected:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}, not {expected}:\n"
                         f"{done.stderr.decode(errors='replace')[-2000:]}")
    return seconds


def baseline_tree(revision: str, folder: Path, env: dict[str, str]) -> Path:
    """The ``selfsup`` package of git ``revision``, extracted under ``folder``; checked to be
    what ``python -m selfsup`` imports there (run in ``folder``: ``-m`` puts the working
    directory before PYTHONPATH, so from the repository it would import the working tree)."""
    archive = folder / "selfsup.tar"
    subprocess.run(["git", "archive", "--output", str(archive), revision, "selfsup"], cwd=REPO,
                   check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    imported = subprocess.run([sys.executable, "-c", "import selfsup; print(selfsup.__file__)"],
                              capture_output=True, text=True, cwd=folder, env=env, check=True)
    if not Path(imported.stdout.strip()).resolve().is_relative_to(folder.resolve()):
        raise SystemExit(f"{revision}: python imports {imported.stdout.strip()}, not {folder}")
    return folder


def summary(seconds: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(seconds), 4), "min_s": round(min(seconds), 4),
            "max_s": round(max(seconds), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--baseline", help="git revision to time as well (before the change)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    python = sys.executable
    script = str(Path(python).with_name("selfsup"))  # the console script beside the interpreter
    env = {**os.environ, "COLUMNS": "100", "PYTHONWARNINGS": "ignore"}
    variants: dict[str, tuple[list[str], dict[str, str], Path]] = {"now": ([script], env, REPO)}
    with tempfile.TemporaryDirectory() as scratch:
        if args.baseline:
            tree_env = {**env, "PYTHONPATH": scratch}
            tree = baseline_tree(args.baseline, Path(scratch), tree_env)
            variants[args.baseline] = ([python, "-m", "selfsup"], tree_env, tree)
        reference: list[float] = []
        runs: dict[str, dict[str, list[float]]] = {v: {c[0]: [] for c in COMMANDS}
                                                   for v in variants}
        load_before = os.getloadavg()
        started = time.perf_counter()
        for _ in range(args.repeats):
            for variant, (prefix, variant_env, cwd) in variants.items():
                for label, arguments, expected in COMMANDS:
                    reference.append(timed([python, "-c", "pass"], 0, env))
                    runs[variant][label].append(timed([*prefix, *arguments], expected,
                                                      variant_env, cwd))
        elapsed = time.perf_counter() - started
        load_after = os.getloadavg()

    result = {
        "benchmark": "startup",
        "command": "python benchmarks/startup.py"
                   + (f" --baseline {args.baseline}" if args.baseline else ""),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"Python {platform.python_version()}",
        "repeats": args.repeats,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "seconds_total": round(elapsed, 1),
        "reference": {"command": "python -c pass", **summary(reference)},
        "results": [
            {"variant": variant, "command": label,
             "runs_as": " ".join(Path(p).name if i == 0 else p
                                 for i, p in enumerate(variants[variant][0])),
             **summary(seconds),
             "median_over_reference_s": round(statistics.median(seconds)
                                              - statistics.median(reference), 4),
             "runs_s": [round(s, 4) for s in seconds]}
            for variant, by_command in runs.items() for label, seconds in by_command.items()
        ],
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "startup.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results_dir / "startup.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    ref = result["reference"]
    lines = [
        "# Command-line start-up (issue 25)",
        "",
        f"`{result['command']}`, {result['date']}; {result['machine']}. Each command "
        f"{result['repeats']} times, each run right after a `python -c pass` reference run "
        f"(median {ref['median_s']:.3f} s). Load average (1, 5, 15 min) "
        f"{', '.join(map(str, result['loadavg_before']))} before, "
        f"{', '.join(map(str, result['loadavg_after']))} after.",
        "",
        "| code | command | runs as | median s | min s | max s | median − reference s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in result["results"]:
        lines.append(f"| {row['variant']} | `{row['command']}` | `{row['runs_as']}` | "
                     f"{row['median_s']:.3f} | {row['min_s']:.3f} | {row['max_s']:.3f} | "
                     f"{row['median_over_reference_s']:.3f} |")
    lines += [
        "",
        "`now` is the working tree (the installed `selfsup` console script); a git revision is "
        "that commit's package run as `python -m selfsup` (the same imports as the script). "
        "`selfsup --help`, each verb's `--help` and argument errors import neither torch nor "
        "Lightning (tests/test_startup.py).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
