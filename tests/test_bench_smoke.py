"""The benchmark harness (bench/run.py) runs end to end on tiny sizes and writes its JSON.

Speed is never asserted, here or in the harness; this only checks that a run completes and records
what bench/README.md says it records. torch and matplotlib are optional peers: the first run hides
them (as on a machine without them), the second uses torch where it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fusedopt

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "bench" / "run.py"

TOP_KEYS = {"schema", "device", "quick", "machine", "threads", "versions", "commit", "started",
            "duration_s", "config", "algorithms", "workloads", "notes", "results", "overhead",
            "agreement", "groups", "machine_load", "targets"}
ROW_KEYS = {"workload", "algo", "impl", "bytes_per_elem", "bytes", "median_s", "p25_s", "p75_s",
            "min_s", "rounds", "gbps", "pct_ceiling", "pct_ceiling_p25", "pct_ceiling_p75",
            "pct_ceiling_medians", "fusedopt_speedup", "fusedopt_speedup_medians"}


def child_env():
    """This environment, with the fusedopt this test imported (installed or built in place)
    first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(fusedopt.__file__).resolve().parent.parent), env.get("PYTHONPATH", "")]
    )
    return env


def run_bench(tmp_path, args, hide=()):
    """Runs bench/run.py in a fresh interpreter with the modules in ``hide`` made unimportable;
    returns the parsed JSON it wrote."""
    code = (
        "import runpy, sys\n"
        f"for m in {list(hide)!r}:\n"
        "    sys.modules[m] = None\n"
        f"sys.argv = [{str(RUN)!r}] + {list(args)!r}\n"
        f"runpy.run_path({str(RUN)!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(tmp_path.glob("*-cpu.json"))
    assert len(files) == 1, (files, proc.stdout[-2000:])
    assert files[0].with_suffix(".md").is_file()
    return json.loads(files[0].read_text()), proc.stdout


def test_quick_run_without_optional_dependencies(tmp_path):
    algos = ["adam", "sgd-nesterov", "rmsprop-centered", "nadam", "radam", "adamw_schedulefree",
             "ewa"]
    workloads = ["flat16M", "model200"]
    out, _ = run_bench(
        tmp_path,
        ["--quick", "--threads", "1", "--out", str(tmp_path), "--algos", ",".join(algos),
         "--workloads", ",".join(workloads)],
        hide=("torch", "matplotlib"),
    )
    assert TOP_KEYS <= out.keys()
    assert out["device"] == "cpu" and out["quick"] is True
    assert out["versions"]["torch"] is None and out["versions"]["matplotlib"] is None
    assert any("torch is not installed" in n for n in out["notes"])
    assert any("matplotlib is not installed" in n for n in out["notes"])
    assert not list(tmp_path.glob("*.png"))
    assert out["threads"]["fusedopt"] == 1
    assert {"cpu_model", "flags", "flags_of_note", "logical_cpus"} <= out["machine"].keys()
    assert out["versions"]["fusedopt"] == fusedopt.__version__
    assert set(out["workloads"]) == set(workloads)

    rows = out["results"]
    assert all(ROW_KEYS <= r.keys() for r in rows)
    got = {(r["workload"], r["algo"], r["impl"]) for r in rows}
    want = {(w, a, i) for w in workloads for a in algos for i in ("ceiling", "fusedopt", "numpy")}
    assert got == want
    for r in rows:
        assert r["median_s"] > 0 and r["p25_s"] <= r["median_s"] <= r["p75_s"]
        assert r["rounds"] == 3
        assert math.isfinite(r["gbps"]) and r["pct_ceiling"] > 0
        assert r["bytes"] == r["bytes_per_elem"] * out["workloads"][r["workload"]]["elements"]
    bpe = {r["algo"]: r["bytes_per_elem"] for r in rows}
    assert bpe == {"adam": 28, "sgd-nesterov": 20, "rmsprop-centered": 28, "nadam": 28,
                   "radam": 28, "adamw_schedulefree": 28, "ewa": 12}
    assert set(out["groups"]) == {f"{w}/{a}" for w in workloads for a in algos}
    assert all(g["finite"] for g in out["groups"].values())

    assert {o["algo"] for o in out["overhead"]} == set(algos)
    # every algorithm's overhead: the functional call, the optimizer class step, the ceiling
    for a in algos:
        assert {"ceiling", "fusedopt", "fusedopt-class"} <= {o["impl"] for o in out["overhead"] if o["algo"] == a}
    assert all(o["median_s"] > 0 for o in out["overhead"])
    # The NumPy peers compute the same update as fusedopt (fp32 rounding apart).
    assert set(out["agreement"]) == set(algos)
    assert all(v["numpy"] < 1e-5 for v in out["agreement"].values()), out["agreement"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_quick_run_with_torch_peers(tmp_path):
    out, _ = run_bench(tmp_path, ["--quick", "--threads", "1", "--out", str(tmp_path),
                                  "--workloads", "incache256K", "--no-chart", "--no-overhead"])
    impls = {(r["algo"], r["impl"]) for r in out["results"]}
    for peer in ("torch-loop", "torch-foreach", "torch-fused"):
        assert ("adam", peer) in impls
    assert ("nadam", "torch-foreach") in impls and ("nadam", "torch-fused") not in impls
    assert out["versions"]["torch"] is not None and out["threads"]["torch"] == 1
    for algo, peers in out["agreement"].items():
        for peer, err in peers.items():
            if peer not in out["algorithms"][algo]["other_rule"]:  # those are recorded only
                assert err < 1e-5, (algo, peer, err)
    assert ("lamb", "torch-loop") in impls  # timm's Lamb, the same rule


def test_unknown_algorithm_is_refused():
    proc = subprocess.run([sys.executable, str(RUN), "--quick", "--algos", "adamz"], cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "unknown: adamz" in proc.stderr


def test_ratios_are_taken_round_by_round():
    """A ratio is the median of the per-round ratios, so that a change of the machine's bandwidth
    between rounds cancels out; the ratio of the two medians is kept beside it."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import algorithms
        import harness
    finally:
        sys.path.remove(str(REPO / "bench"))
    # Rounds alternate between a slow and a fast machine, and fusedopt's slow rounds outnumber
    # the ceiling's, so the two medians come from different kinds of round.
    ceiling = [2.0, 1.0, 2.0, 1.0, 1.0]
    fusedopt = [2.5, 1.25, 2.5, 1.25, 2.5]  # 80% of the ceiling in every round but the last
    numpy_ = [5.0, 2.5, 5.0, 2.5, 2.5]  # 2x fusedopt's time in every round but the last
    rows = harness.group_rows("w", algorithms.ALGOS["adam"], 1000,
                              {"ceiling": ceiling, "fusedopt": fusedopt, "numpy": numpy_})
    fo = next(r for r in rows if r["impl"] == "fusedopt")
    npy = next(r for r in rows if r["impl"] == "numpy")
    assert fo["pct_ceiling"] == pytest.approx(80.0)
    assert (fo["pct_ceiling_p25"], fo["pct_ceiling_p75"]) == (pytest.approx(80.0), pytest.approx(80.0))
    assert fo["pct_ceiling_medians"] == pytest.approx(100.0 * 1.0 / 2.5)
    assert npy["fusedopt_speedup"] == pytest.approx(2.0)
    assert npy["fusedopt_speedup_medians"] == pytest.approx(2.5 / 2.5)
    assert fo["fusedopt_speedup"] == pytest.approx(1.0)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
@pytest.mark.parametrize("script, impls", [
    ("torch_front.py", {"ceiling", "fusedopt.torch", "fusedopt (NumPy)", "torch fused",
                        "torch foreach"}),
    ("clip.py", {"ceiling", "fusedopt.torch", "fusedopt (NumPy)", "torch (default)",
                 "torch foreach"}),
])
def test_torch_side_by_side_benches_run(tmp_path, script, impls):
    """bench/torch_front.py (Adam) and bench/clip.py (clipping): every implementation on every
    workload, a row each in the JSON."""
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, str(REPO / "bench" / script), "--quick",
                    "--rounds", "1", "--reps", "1", "--json", str(out)],
                   check=True, env=child_env(), capture_output=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    for w in ("tiny200", "flat16M", "small4096"):
        assert {r["impl"] for r in rows if r["workload"] == w} == impls
    assert all(r["median_us"] > 0 and math.isfinite(r["gb_s"]) for r in rows)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_adafactor_bench_runs(tmp_path, dtype):
    """bench/adafactor.py: every implementation on every workload, a row each in the JSON."""
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "adafactor.py"), "--quick",
                    "--rounds", "1", "--reps", "1", "--dtype", dtype, "--json", str(out)],
                   check=True, env=child_env(), capture_output=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    impls = {"ceiling", "fusedopt.torch", "fusedopt (NumPy)", "torch (default loop)",
             "torch foreach"}
    remedies = {"SR": 1.0, "Kahan": 4 / 3, "master": 5 / 3}  # factored bytes over plain bf16's
    if dtype == "bfloat16":
        impls |= {f"fusedopt (NumPy) {r}" for r in remedies}
    for w in ("gpt6x768", "m4096", "vec16M", "small1024"):
        assert {r["impl"] for r in rows if r["workload"] == w} == impls
    assert all(r["median_us"] > 0 and math.isfinite(r["gb_s"]) for r in rows)
    # each remedy counts its own bytes (m4096: one factored matrix)
    m4096 = {r["impl"]: r["bytes"] for r in rows if r["workload"] == "m4096"}
    for r, ratio in remedies.items():
        if dtype == "bfloat16":
            assert m4096[f"fusedopt (NumPy) {r}"] == pytest.approx(ratio * m4096["ceiling"])


def test_low_precision_bench_runs(tmp_path):
    """bench/low_precision.py: fusedopt and the ceiling on every configuration (torch and
    DeepSpeed left out: they are optional peers), a row each in the JSON."""
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "low_precision.py"), "--quick",
                    "--no-torch", "--json", str(out)],
                   check=True, env=child_env(), capture_output=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    configs = ("fp32", "bf16-p", "bf16", "fp32-p-bf16-s", "offload", "fp16-p", "offload-copy",
               "bf16-master")
    for c in configs:
        assert {r["impl"] for r in rows if r["config"] == c} == {"ceiling", "fusedopt"}, c
    assert all(r["median_ms"] > 0 and math.isfinite(r["gb_s"]) for r in rows)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_train_torch_runs(tmp_path):
    """bench/train_torch.py on tiny settings: both models, both optimizers, losses recorded."""
    out = tmp_path / "train.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "train_torch.py"), "--model", "both",
                    "--steps", "3", "--layers", "1", "--width", "64", "--json", str(out)],
                   check=True, env=child_env(), capture_output=True, timeout=600)
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"cnn", "lm"}
    for r in results.values():
        assert set(r["runs"]) == {"torch-fused", "fusedopt"} and r["steps"] == 3
        assert math.isfinite(r["max_rel_diff"])


def test_the_ceiling_writes_what_it_is_told():
    """``_core.cpu.rmw`` (the ceiling): params and the first ``writes - 1`` state lists are
    written (each plus the grads and the lists only read), the others only read; ``writes=0``
    writes nothing; a count out of range is refused."""
    import numpy as np

    from fusedopt import _core

    p, g, m, v = (np.full(70000, x, np.float32) for x in (1.0, 2.0, 3.0, 4.0))
    _core.cpu.rmw([p], [g], [[m], [v]], 2)  # p and m written, v only read
    assert (p == 1 + 2 + 4).all() and (m == 3 + 2 + 4).all() and (v == 4).all() and (g == 2).all()
    before = [x.copy() for x in (p, g, m, v)]
    _core.cpu.rmw([p], [g], [[m], [v]], 0)
    assert all((x == y).all() for x, y in zip((p, g, m, v), before))
    _core.cpu.rmw([p], [g], [[m], [v]])  # all but the grads
    assert (p == 7 + 2).all() and (m == 9 + 2).all() and (v == 4 + 2).all()
    with pytest.raises(ValueError, match=r"rmw: writes must be 0..3, got 4"):
        _core.cpu.rmw([p], [g], [[m], [v]], 4)
