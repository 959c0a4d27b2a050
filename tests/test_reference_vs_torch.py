"""The oracle checked against an independent implementation: fusedopt.reference against
``torch.optim`` (single-tensor code path, float64) for every algorithm and configuration of the
table, 8 steps, comparing the parameters and every state buffer, and NAdam's ``mu_product``.

Skipped when PyTorch is not installed (it is not a dependency). Run it with a Python that has
``torch`` (any 2.x; written against 2.13's update rules), e.g.::

    PYTHONPATH=python /path/to/torch-venv/bin/python -m pytest tests/test_reference_vs_torch.py
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fusedopt import reference  # noqa: E402

from algos import ALGO_CONFIG_IDS, ALGO_CONFIGS, STEPS  # noqa: E402
from test_parity import TOL, assert_close  # noqa: E402

# fusedopt's list names -> torch.optim's per-parameter state names
TORCH_STATE = {
    "momentum_buffers": "momentum_buffer",
    "state_sums": "sum",
    "square_avgs": "square_avg",
    "acc_deltas": "acc_delta",
    "grad_avgs": "grad_avg",
    "exp_avgs": "exp_avg",
    "exp_avg_sqs": "exp_avg_sq",
    "max_exp_avg_sqs": "max_exp_avg_sq",
    "exp_infs": "exp_inf",
}

TORCH_CLASS = {
    "sgd": "SGD",
    "adagrad": "Adagrad",
    "adadelta": "Adadelta",
    "rmsprop": "RMSprop",
    "adam": "Adam",
    "adamw": "AdamW",
    "nadam": "NAdam",
    "adamax": "Adamax",
    "radam": "RAdam",
}

SHAPES = [(1000,), (7, 5), (1,)]


@pytest.fixture(autouse=True)
def float64_scalars():
    """torch keeps ``step`` and NAdam's ``mu_product`` as tensors of the default dtype; float64
    keeps them exact, as the reference does."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def nadam_mu(hp, t):
    beta1 = hp.get("betas", (0.9, 0.999))[0]
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * hp.get("momentum_decay", 4e-3)))


def torch_optimizer(algo, cfg, tparams, states):
    hp = dict(cfg.hp)
    kwargs = dict(hp, foreach=False)
    if algo.name == "adagrad":
        kwargs["initial_accumulator_value"] = cfg.init.get("state_sums", 0.0)
    opt = getattr(torch.optim, TORCH_CLASS[algo.name])(tparams, **kwargs)
    for i, p in enumerate(tparams):
        st = opt.state[p]
        if algo.name != "sgd":
            st["step"] = torch.tensor(float(cfg.start - 1))
        for name, arrays in states.items():
            if algo.name == "sgd" and cfg.start == 1:
                continue  # torch starts a missing buffer from the gradient, as step 1 does
            st[TORCH_STATE[name]] = torch.from_numpy(arrays[i].copy())
        if algo.name == "nadam":
            st["mu_product"] = torch.tensor(
                float(np.prod([nadam_mu(hp, t) for t in range(1, cfg.start)]))
            )
    return opt


# the algorithms torch.optim has (Lion's peer, lion-pytorch, is checked in tests/test_peers.py;
# ADOPT's, torch-adopt, in tests/test_peer_adopt.py; Schedule-Free's in tests/test_peer_schedulefree.py;
# LAMB's, timm's Lamb, in tests/test_peer_lamb.py)
TORCH_CONFIGS = [(a, c) for a, c in ALGO_CONFIGS if a.name in TORCH_CLASS or a.name == "ewa"]
TORCH_CONFIG_IDS = [i for (a, _), i in zip(ALGO_CONFIGS, ALGO_CONFIG_IDS)
                    if a.name in TORCH_CLASS or a.name == "ewa"]


def test_every_algorithm_is_checked_against_its_peer():
    assert {a.name for a, _ in ALGO_CONFIGS} - set(TORCH_CLASS) == {
        "ewa", "lion", "adopt", "adamw_schedulefree", "lamb"}


@pytest.mark.parametrize("algo, cfg", TORCH_CONFIGS, ids=TORCH_CONFIG_IDS)
def test_reference_matches_torch(algo, cfg):
    rng = np.random.default_rng(zlib.crc32(f"torch-{algo.name}-{cfg.id}".encode()))
    params = [rng.standard_normal(s) for s in SHAPES]
    states = algo.new_states(params, cfg)
    tparams = [torch.from_numpy(p.copy()) for p in params]
    if algo.name == "ewa":
        ema = torch.optim.swa_utils.get_ema_avg_fn(cfg.hp["beta"])
        touts = [torch.zeros_like(p) for p in tparams]
    else:
        opt = torch_optimizer(algo, cfg, tparams, states)
    carry = None
    for k in range(STEPS):
        t = cfg.start + k
        grads = [rng.standard_normal(p.shape) for p in params]
        carry = algo.step(reference, params, grads, states, t, cfg.hp, carry)
        if algo.name == "ewa":
            for tp, g, to in zip(tparams, grads, touts):
                tp.copy_(ema(tp, torch.from_numpy(g), k))
                to.copy_(tp / (1.0 - cfg.hp["beta"] ** t))
        else:
            for tp, g in zip(tparams, grads):
                tp.grad = torch.from_numpy(g.copy())
            opt.step()
    for i, (p, tp) in enumerate(zip(params, tparams)):
        assert_close(p, tp.numpy().astype(np.float64), np.float64, f"params[{i}]")
        for name, arrays in states.items():
            if algo.name == "ewa":
                expected = touts[i]
            else:
                expected = opt.state[tp][TORCH_STATE[name]]
            assert_close(arrays[i], expected.numpy(), np.float64, f"{name}[{i}]")
        if algo.name == "nadam":
            mu = float(opt.state[tp]["mu_product"])
            assert carry == pytest.approx(mu, rel=TOL[np.float64][0]), "mu_product"
