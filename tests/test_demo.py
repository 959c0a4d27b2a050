"""The demo (``python -m fusedopt demo``): the idx loader and its sha256 check, the MLP's gradients,
and small runs on generated data -- every optimizer lowers the loss, the table, PNGs and JSON are
written, and the run is deterministic for a seed."""

from __future__ import annotations

import contextlib
import dataclasses
import doctest
import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusedopt
from fusedopt.demo import data as demo_data
from fusedopt.demo.data import DataError, load_fashion_mnist, read_idx, write_idx
from fusedopt.demo.mlp import MLP
from fusedopt.demo.run import Plan, main, run_demo

# A run small enough for a test: 8x8 images, one hidden layer of 16, a few epochs.
TINY = Plan(epochs=3, batch_size=16, points_per_epoch=4, regime_size=48, regime_epochs=4, regime_points=2,
            hidden=(16,))


def _make_images(rng, n, side=8, classes=10):
    """Noisy copies of one random prototype per class: learnable, unlike pure noise."""
    prototypes = rng.integers(0, 256, (classes, side, side))
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    noise = rng.normal(0, 40, (n, side, side))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8)


def _write_dataset(directory, *, n_train=192, n_test=64, gz=True, seed=0):
    """The four files under the release's names, with generated contents (so not the release's
    sha256)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    images, labels = _make_images(rng, n_train + n_test)
    suffix = ".gz" if gz else ""
    for key, array in (("train_images", images[:n_train]), ("train_labels", labels[:n_train]),
                       ("test_images", images[n_train:]), ("test_labels", labels[n_train:])):
        write_idx(directory / (demo_data.FILES[key][0] + suffix), array)
    return directory


@pytest.fixture
def dataset_dir(tmp_path):
    return _write_dataset(tmp_path / "data")


def _run_main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


# ---- idx files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.arange(5, dtype=np.uint8),
        np.array([[-1, 7]], np.int8),
        np.array([1, -300, 2**20], np.int32),
        np.array([[0.5, -1e30]], np.float32),
        np.array([np.pi], np.float64),
    ],
    ids=["u8-3d", "u8-1d", "i8", "i32", "f32", "f64"],
)
def test_idx_round_trip(tmp_path, array, suffix):
    path = write_idx(tmp_path / f"a-idx{suffix}", array)
    back = read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=") and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_the_published_layout(tmp_path):
    """Magic 0x00000803 for 3-d ubyte, then big-endian sizes, then the bytes (as LeCun's files)."""
    raw = write_idx(tmp_path / "x", np.zeros((2, 1, 3), np.uint8)).read_bytes()
    assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3])
    assert len(raw) == 16 + 6


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not an idx file"),
        (bytes([1, 0, 8, 1, 0, 0, 0, 1, 7]), "bad magic number"),
        (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]), "bad magic number"),
        (bytes([0, 0, 8, 2, 0, 0]), "shorter than its own header"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 4, 1, 2, 3]), "truncated: 11 bytes, expected 12"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 1, 1, 2]), "longer than its header says"),
    ],
    ids=["empty", "magic", "type-code", "short-header", "truncated", "too-long"],
)
def test_idx_corrupt_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_idx(path)


def test_idx_corrupt_gzip_is_refused(tmp_path):
    good = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(200))
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(good[: len(good) // 2])  # a download cut short
    with pytest.raises(DataError, match="not a valid gzip file.*corrupt"):
        read_idx(path)
    path.write_bytes(b"plain text, not gzip")
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_idx(path)


# ---- the data set and its check -----------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_generated_data_loads_unverified(tmp_path, gz):
    directory = _write_dataset(tmp_path / "d", n_train=30, n_test=10, gz=gz)
    data = load_fashion_mnist(directory, verify=False)
    assert data.verified is False and data.directory == directory
    assert data.x_train.shape == (30, 64) and data.x_test.shape == (10, 64)
    assert data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.y_train.dtype == np.int64 and data.n_classes == 10
    assert data.image_shape == (8, 8)


def test_generated_data_fails_the_sha256_check(dataset_dir):
    """Files under the release's names but with other contents are not Fashion-MNIST."""
    with pytest.raises(DataError, match=r"(?s)sha256.*expected c59f468a.*--no-verify"):
        load_fashion_mnist(dataset_dir)


def test_missing_data_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv(demo_data.ENV_VAR, raising=False)
    with pytest.raises(DataError, match=r"(?s)is not a folder.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")
    directory = _write_dataset(tmp_path / "d", n_train=20, n_test=10)
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"(?s)missing t10k-labels-idx1-ubyte\[\.gz\].*apt-get install"):
        load_fashion_mnist(directory, verify=False)


def test_data_folder_from_the_environment(tmp_path, monkeypatch):
    directory = _write_dataset(tmp_path / "env", n_train=20, n_test=10)
    monkeypatch.setenv(demo_data.ENV_VAR, str(directory))
    assert demo_data.resolve_dir() == (directory, f"${demo_data.ENV_VAR}")
    assert load_fashion_mnist(verify=False).directory == directory
    assert demo_data.resolve_dir(tmp_path)[0] == tmp_path  # --data wins
    monkeypatch.delenv(demo_data.ENV_VAR)
    assert demo_data.resolve_dir()[0] == demo_data.DEFAULT_DIR


def test_inconsistent_files_are_refused(tmp_path):
    directory = _write_dataset(tmp_path / "d", n_train=20, n_test=10)
    write_idx(directory / "train-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    with pytest.raises(DataError, match="has 19 labels for the 20 images"):
        load_fashion_mnist(directory, verify=False)
    write_idx(directory / "train-labels-idx1-ubyte.gz", np.zeros((20, 1), np.uint8))
    with pytest.raises(DataError, match=r"expected uint8 labels \(n,\)"):
        load_fashion_mnist(directory, verify=False)


@pytest.mark.skipif(
    not all((demo_data.DEFAULT_DIR / (stem + ".gz")).is_file() for stem, _ in demo_data.FILES.values()),
    reason="the Debian package dataset-fashion-mnist is not installed",
)
def test_the_installed_release_verifies(tmp_path):
    data = load_fashion_mnist(demo_data.DEFAULT_DIR)
    assert data.verified
    assert data.x_train.shape == (60000, 784) and data.x_test.shape == (10000, 784)
    assert np.bincount(data.y_train).tolist() == [6000] * 10
    # One changed byte anywhere fails the check, even with a valid idx header and size.
    copy = tmp_path / "copy"
    copy.mkdir()
    for stem, _ in demo_data.FILES.values():
        (copy / (stem + ".gz")).symlink_to(demo_data.DEFAULT_DIR / (stem + ".gz"))
    labels = bytearray(gzip.decompress((demo_data.DEFAULT_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels[-1] ^= 1
    (copy / "t10k-labels-idx1-ubyte.gz").unlink()
    (copy / "t10k-labels-idx1-ubyte").write_bytes(labels)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: the sha256"):
        load_fashion_mnist(copy)


# ---- the network -----------------------------------------------------------------------------------


def test_mlp_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    net = MLP((5, 7, 6, 4), seed=1, dtype=np.float64)
    for p in net.params[1::2]:
        p[:] = rng.normal(0, 0.1, p.shape)  # non-zero biases, so their gradients are exercised too
    x = rng.normal(size=(3, 5))
    y = np.array([0, 3, 1])
    net.loss_and_grad(x, y)
    h = 1e-6
    for p, g in zip(net.params, net.grads):
        numeric = np.empty_like(p)
        for i in np.ndindex(p.shape):
            saved = p[i]
            p[i] = saved + h
            up = net.loss(x, y)
            p[i] = saved - h
            down = net.loss(x, y)
            p[i] = saved
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-8)


def test_mlp_docstring_example():
    import fusedopt.demo.mlp

    result = doctest.testmod(fusedopt.demo.mlp, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_mlp_float32_and_determinism():
    a, b = MLP(seed=7), MLP(seed=7)
    assert [p.shape for p in a.params] == [(784, 256), (256,), (256, 128), (128,), (128, 10), (10,)]
    assert all(p.dtype == np.float32 and p.flags.c_contiguous for p in a.params + a.grads)
    assert all(np.array_equal(p, q) for p, q in zip(a.params, b.params))
    assert not np.array_equal(a.params[0], MLP(seed=8).params[0])
    # He initialisation: weight variance 2 / fan_in.
    assert abs(a.params[0].var() * 784 / 2 - 1) < 0.02
    x = np.random.default_rng(0).random((32, 784), dtype=np.float32)
    y = np.arange(32) % 10
    loss = a.loss_and_grad(x, y)
    assert loss == pytest.approx(a.loss(x, y), rel=1e-6)
    assert 0 <= a.accuracy(x, y) <= 1


# ---- the experiment ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    data = load_fashion_mnist(_write_dataset(tmp_path_factory.mktemp("tiny")), verify=False)
    return data, run_demo(data, TINY, seed=0, progress=False, log=lambda line: None)


def test_every_run_lowers_the_loss(tiny_results):
    _, results = tiny_results
    assert list(results) == ["optimizers", "regimes", "decay", "precision", "trajectories"]
    labels = [r["label"] for r in results["optimizers"]]
    assert labels == ["SGD", "SGD+momentum", "Nesterov", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW",
                      "NAdam", "Adamax"]
    assert [r["batch_size"] for r in results["regimes"]] == [48, 16, 1]
    assert [(r["label"], r["storage"]) for r in results["precision"]] == [
        ("float32", "float32"), ("bfloat16", "bfloat16"), ("bf16 + stochastic rounding", "bfloat16"),
        ("bf16 + Kahan summation", "bfloat16"), ("bf16 + fp32 master weights", "bfloat16")]
    for name in ("optimizers", "regimes", "decay", "precision"):  # trajectories: test_trajectories.py
        for r in results[name]:
            first = r["curve"]["loss"][0]
            assert r["final_train_loss"] < (0.85 * first if name == "optimizers" else first), r["label"]
            assert np.isfinite(r["test_accuracy"]) and 0 < r["wall_s"] and 0 < r["update_s"] < r["wall_s"]


def test_curves_are_laid_out_per_epoch(tiny_results):
    data, results = tiny_results
    r = results["optimizers"][0]
    c = r["curve"]
    steps_per_epoch = -(-len(data.x_train) // TINY.batch_size)
    assert r["steps"] == TINY.epochs * steps_per_epoch
    assert c["step"][0] == 0 and c["step"][-1] == r["steps"] and c["epoch"][-1] == TINY.epochs
    assert len(c["step"]) == 1 + TINY.epochs * TINY.points_per_epoch
    assert len(c["loss"]) == len(c["epoch"]) == len(c["lr"]) == len(c["step"])
    decay = {d["label"]: d["curve"]["lr"] for d in results["decay"]}
    assert decay["constant"][0] == decay["constant"][-1] == decay["exponential"][0]
    assert decay["exponential"][-1] < decay["exponential"][0] / 5  # decays to about a tenth
    assert decay["step"][-1] < decay["step"][0]


def test_same_seed_same_curves(tiny_results):
    data, results = tiny_results
    plan = dataclasses.replace(TINY, experiments=("optimizers",))
    again = run_demo(data, plan, seed=0, progress=False, log=lambda line: None)
    other = run_demo(data, plan, seed=1, progress=False, log=lambda line: None)
    for a, b, c in zip(results["optimizers"], again["optimizers"], other["optimizers"]):
        assert a["curve"]["loss"] == b["curve"]["loss"] and a["test_accuracy"] == b["test_accuracy"]
        assert a["curve"]["loss"] != c["curve"]["loss"]


def test_cli_run_writes_table_plots_and_json(dataset_dir, tmp_path):
    """The real command line in a fresh interpreter, on generated data accepted with --no-verify."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(fusedopt.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "fusedopt", "demo", "--quick", "--epochs", "1", "--data", str(dataset_dir),
         "--no-verify", "--out", str(out), "--seed", "3"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "UNVERIFIED idx data (--no-verify)" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| optimizers |")]
    assert len(rows) == 10
    assert "note:" not in proc.stdout  # tqdm, matplotlib (the test extra) are installed
    pictures = ("optimizers", "regimes", "decay", "precision", "trajectories-regimes", "trajectories-bowl",
                "trajectories-nonconvex", "trajectories-decay")
    for name in pictures:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "results.json").read_text())
    assert record["meta"]["verified"] is False and record["meta"]["seed"] == 3
    assert record["meta"]["image_shape"] == [8, 8]
    decay = {r["label"] for r in record["results"]["decay"]}
    assert decay == {"constant", "exponential", "inverse-time", "step"}
    assert all(len(r["curve"]["loss"]) > 2 for name in ("optimizers", "regimes", "decay", "precision")
               for r in record["results"][name])
    # Note [Kahan summation], [Master weights], [Stochastic rounding]: the options each run used
    assert [r["options"] for r in record["results"]["precision"]] == [
        {}, {}, {"stochastic_rounding": True, "seed": 0}, {"kahan_summation": True},
        {"master_weights": True}]
    assert set(record["results"]["trajectories"]) == {"regimes", "bowl", "nonconvex", "decay"}


def test_cli_refuses_unverified_data_without_traceback(dataset_dir, tmp_path):
    rc, out, err = _run_main(["--data", str(dataset_dir), "--out", str(tmp_path / "o")])
    assert rc == 1 and out == ""
    assert "sha256" in err and "--no-verify" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    rc, out, err = _run_main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert rc == 1 and "apt-get install dataset-fashion-mnist" in err


def test_cli_without_matplotlib_still_writes_the_json(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    rc, out, _ = _run_main(["--data", str(dataset_dir), "--no-verify", "--out", str(tmp_path / "o"),
                            "--only", "optimizers", "--epochs", "1", "--no-progress"])
    assert rc == 0
    assert "note: no plots: matplotlib is not installed" in out
    assert not list((tmp_path / "o").glob("*.png"))
    assert json.loads((tmp_path / "o" / "results.json").read_text())["results"]["optimizers"]


def test_cli_usage_errors(capsys):
    assert main(["--only", "nonsense"]) == 2
    assert "--only takes experiments among optimizers,regimes,decay" in capsys.readouterr().err
    assert main(["--epochs", "0"]) == 2
    from fusedopt.__main__ import main as top

    assert top([]) == 0 and "demo" in capsys.readouterr().out
    assert top(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err
