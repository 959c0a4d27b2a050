"""The defects a review found by using fusedopt as a new user would (issue: the redesign), one test
each, written before the fix (each failed on the code before the redesign). Each names its item in
the issue's list."""

from __future__ import annotations

import copy
import math
import pickle
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import fusedopt
from fusedopt import functional, schedules
from fusedopt.optim import EMA, SGD, Adam

ROOT = Path(__file__).resolve().parents[1]



def bits(a):
    return a.tobytes()


# ---- 1. a copy of an optimizer checks its own memory, not the original's ---------------------------


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_1_copy_checks_overlap_against_its_own_params(how):
    a = np.linspace(-1.0, 1.0, 8)
    opt = Adam([a], lr=0.1)
    opt.step([np.ones(8)])
    cp = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    own = cp.param_groups[0]["params"][0]
    # A view of the copy's own param would be updated twice per step: refused.
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
        cp.add_param_group({"params": [own[2:6]]})
    # The original's array is not the copy's: a new param to the copy, accepted.
    cp.add_param_group({"params": [a]})
    before = bits(a)
    cp.step([np.ones(8), np.ones(8)])
    assert bits(a) != before  # updated through the copy's second group


# ---- 2. aliasing across the calls of one step ---------------------------------------------------------


def _two_groups():
    p0, p1 = np.linspace(-1, 1, 6), np.linspace(1, 2, 6)
    opt = Adam([{"params": [p0]}, {"params": [p1], "lr": 0.1}], lr=0.01)
    opt.step([np.ones(6), np.ones(6)])
    return opt, p0, p1


def _snapshot(opt, params):
    return [bits(p) for p in params], {
        i: {k: bits(v) if isinstance(v, np.ndarray) else v for k, v in s.items()}
        for i, s in opt.state_dict()["state"].items()}


def test_2_a_grad_that_is_a_param_of_another_group_is_refused():
    opt, p0, p1 = _two_groups()
    before = _snapshot(opt, [p0, p1])
    with pytest.raises(ValueError, match=r"grads\[1\] overlaps params\[0\]"):
        opt.step([np.ones(6), p0])
    assert _snapshot(opt, [p0, p1]) == before


def test_2_a_state_shared_by_two_groups_is_refused():
    opt, p0, p1 = _two_groups()
    opt.state[1]["exp_avg"] = opt.state[0]["exp_avg"]
    before = _snapshot(opt, [p0, p1])
    with pytest.raises(ValueError, match=r"exp_avgs\[1\] overlaps exp_avgs\[0\]"):
        opt.step([np.ones(6), np.ones(6)])
    assert [bits(p) for p in (p0, p1)] == before[0]


# ---- 3. NAdam's mu_product=None in constant time -------------------------------------------------------


@pytest.mark.parametrize("step", [10**7, 10**12])
def test_3_nadam_closed_form_is_constant_time(step):
    """A liveness check, not a speed measurement: in a child process, so that a call that holds the
    GIL for hours (the old loop over every earlier step) fails the test instead of hanging it."""
    code = (
        "import numpy as np, fusedopt.functional as F\n"
        "p, g, m, v = np.ones(4), np.full(4, 0.5), np.zeros(4), np.zeros(4)\n"
        f"print(repr(F.nadam(p, g, m, v, step={step}, lr=0.01)))\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except subprocess.TimeoutExpired:
        pytest.fail(f"functional.nadam(step={step}, mu_product=None) did not return in 60 s")
    assert float(out) == 0.0  # 0.9**(step - 1) underflows long before


@pytest.mark.parametrize("beta1, momentum_decay", [(0.9, 4e-3), (0.999, 1e-5), (0.5, 0.0),
                                                   (0.99, 0.3), (0.0, 4e-3)])
@pytest.mark.parametrize("step", [1, 2, 3, 50, 4000, 20000])
def test_3_nadam_closed_form_matches_the_running_product(beta1, momentum_decay, step):
    def mu(t):
        return beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))

    want = 1.0
    for t in range(1, step):
        want *= mu(t)
    want *= mu(step)
    p, g = np.ones(3), np.full(3, 0.5)
    got = functional.nadam(p, g, np.zeros(3), np.zeros(3), step=step, lr=0.01,
                           betas=(beta1, 0.999), momentum_decay=momentum_decay)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-300)


# ---- 4. an in-place edit of a group's list value is validated -----------------------------------------


def test_4_betas_edited_in_place_is_checked_at_the_next_step():
    p = np.ones(3)
    opt = Adam([p], lr=0.1, betas=[0.9, 0.999])
    opt.step([np.ones(3)])
    opt.param_groups[0]["betas"][0] = 1.5
    before = bits(p)
    with pytest.raises(ValueError, match=re.escape("Invalid beta parameter at index 0: 1.5 "
                                                   "(in param_groups[0])")):
        opt.step([np.ones(3)])
    assert bits(p) == before


# ---- 5. masked arrays are refused everywhere -----------------------------------------------------------


@pytest.mark.parametrize("which", ["params", "grads", "exp_avgs"])
def test_5_masked_arrays_are_refused_by_functional(which):
    bufs = {k: np.ones(4) for k in ("params", "grads", "exp_avgs", "exp_avg_sqs")}
    bufs[which] = np.ma.array(bufs[which], mask=[0, 1, 0, 0])
    snap = {k: bits(np.asarray(v)) for k, v in bufs.items()}
    with pytest.raises(TypeError, match=rf"adam: {which}\[0\] is a masked array"):
        functional.adam(*([bufs[k]] for k in ("params", "grads", "exp_avgs", "exp_avg_sqs")),
                        step=1, lr=0.1)
    assert {k: bits(np.asarray(v)) for k, v in bufs.items()} == snap


def test_5_masked_arrays_are_refused_by_the_classes():
    with pytest.raises(TypeError, match=r"Adam: params\[0\] is a masked array"):
        Adam([np.ma.array(np.ones(3))])
    p = np.ones(3)
    opt = Adam([p])
    with pytest.raises(TypeError, match=r"Adam.step: grads\[0\] is a masked array"):
        opt.step([np.ma.array(np.ones(3), mask=[1, 0, 0])])
    with pytest.raises(TypeError, match=r"EMA: params\[0\] is a masked array"):
        EMA([np.ma.array(np.ones(3))])


# ---- 6. a param's byte order at construction; a param reshaped in place --------------------------------


def test_6_big_endian_param_is_refused_at_construction():
    with pytest.raises(TypeError, match=r"Adam: params\[0\] has a non-native byte order"):
        Adam([np.ones(3, dtype=">f8")])
    with pytest.raises(TypeError, match=r"EMA: params\[0\] has a non-native byte order"):
        EMA([np.ones(3, dtype=">f4")])


@pytest.mark.parametrize("grad_shape", [(4, 3), (3, 4)])
def test_6_param_reshaped_in_place_is_named_as_such(grad_shape):
    p = np.ones((4, 3))
    opt = Adam([p], lr=0.1)
    opt.step([np.ones((4, 3))])
    p.shape = (3, 4)
    before = bits(p)
    with pytest.raises(ValueError, match=re.escape(
            "Adam.step: params[0] was changed in place: shape (4, 3) -> (3, 4)")):
        opt.step([np.ones(grad_shape)])
    assert bits(p) == before


# ---- 7. scalar arguments of the wrong type name the argument -------------------------------------------


def _adam_lists():
    return [np.ones(3)], [np.ones(3)], [np.zeros(3)], [np.zeros(3)]


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        (dict(step=1.0), TypeError, "adam: step must be an int, got float"),
        (dict(step=1, betas=(0.9, 0.99, 0.5)), ValueError,
         "adam: betas must be a pair (beta1, beta2), got (0.9, 0.99, 0.5)"),
        (dict(step=1, lr="a"), TypeError, "adam: lr must be a real number, got str"),
        (dict(step=1, amsgrad="no"), TypeError, "adam: amsgrad must be a bool, got str"),
        (dict(step=1, maximize=1), TypeError, "adam: maximize must be a bool, got int"),
        (dict(step=1, eps=None), TypeError, "adam: eps must be a real number, got NoneType"),
    ],
    ids=["step-float", "betas-3", "lr-str", "amsgrad-str", "maximize-int", "eps-none"],
)
def test_7_functional_scalar_types(kwargs, exc, message):
    lists = _adam_lists()
    before = [bits(a) for col in lists for a in col]
    with pytest.raises(exc, match="^" + re.escape(message) + "$"):
        functional.adam(*lists, **kwargs)
    assert [bits(a) for col in lists for a in col] == before


def test_7_numpy_scalars_are_accepted():
    lists = _adam_lists()
    functional.adam(*lists, step=np.int64(2), lr=np.float32(0.5), betas=np.array([0.9, 0.99]),
                    amsgrad=np.bool_(False))
    assert lists[0][0][0] != 1.0


@pytest.mark.parametrize(
    "call, exc, message",
    [
        (lambda: fusedopt.set_num_threads(True), TypeError,
         "set_num_threads: n must be an int, got bool"),
        (lambda: functional.ewa([np.zeros(3)], [np.ones(3)], beta=2.0), ValueError,
         "ewa: Invalid beta value: 2.0"),
        (lambda: functional.ewa([np.zeros(3)], [np.ones(3)], beta=-0.1), ValueError,
         "ewa: Invalid beta value: -0.1"),
        (lambda: functional.ewa_readout([np.zeros(3)], [np.ones(3)], beta=1.0, step=1), ValueError,
         "ewa_readout: Invalid beta value: 1.0"),
        (lambda: functional.sgd([np.ones(3)], [np.ones(3)], step=1, nesterov="yes"), TypeError,
         "sgd: nesterov must be a bool, got str"),
    ],
    ids=["threads-bool", "ewa-beta-2", "ewa-beta-neg", "readout-beta-1", "sgd-nesterov-str"],
)
def test_7_other_scalar_checks(call, exc, message):
    with pytest.raises(exc, match="^" + re.escape(message) + "$"):
        call()


# ---- 8. schedules that overflow; lr=inf ----------------------------------------------------------------


def test_8_schedule_overflow_returns_inf_and_the_step_refuses_it():
    assert schedules.ExponentialDecay(1e-3, decay_rate=1.1, decay_steps=1)(7450) == math.inf
    s = schedules.ExponentialDecay(1e-3, decay_rate=1e300, decay_steps=1)  # inf from t = 2
    p = np.ones(3)
    opt = SGD([p], lr=s)
    opt.step([np.ones(3)])
    opt.step([np.ones(3)])
    before = bits(p)
    with pytest.raises(ValueError, match=re.escape(
            "Invalid learning rate: inf (from the schedule of param_groups[0] at t=2)")):
        opt.step([np.ones(3)])
    assert bits(p) == before


@pytest.mark.parametrize("lr", [math.inf, math.nan])
def test_8_a_constant_non_finite_lr_is_refused_like_a_scheduled_one(lr):
    with pytest.raises(ValueError, match=re.escape(f"Invalid learning rate: {lr}")):
        Adam([np.ones(3)], lr=lr)


# ---- 9. one optimizer stepped from two threads at once -------------------------------------------------


def test_9_a_concurrent_step_of_one_optimizer_is_refused():
    p = np.ones(4)
    inside = threading.Event()
    other_done = threading.Event()
    calls = []

    def lr(t):
        calls.append(t)
        if len(calls) == 1:  # the first step waits inside until the other thread has tried
            inside.set()
            other_done.wait(5.0)
        return 0.1

    opt = SGD([p], lr=lr)
    errors = []

    def first():
        opt.step([np.ones(4)])

    def second():
        inside.wait(5.0)
        try:
            opt.step([np.ones(4)])
        except RuntimeError as e:
            errors.append(str(e))
        finally:
            other_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10.0)
    assert errors == ["SGD.step: this optimizer is being stepped in another thread; "
                      "steps of one optimizer must not overlap"]
    assert opt.state[0]["step"] == 1


# ---- 10. comments and notes ---------------------------------------------------------------------------


def _sources():
    for folder in ("csrc", "python"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".h", ".cpp", ".cu", ".cuh", ".py", ".pyi") and "demo" not in path.parts:
                yield path


def test_10_no_comment_points_outside_the_repository():
    """No reference to the project's conventions by their numbers in files outside this repository
    (code, tests, benchmarks and the READMEs)."""
    more = [p for p in (ROOT / "tests").glob("*.py") if p.name != Path(__file__).name]
    more += [*(ROOT / "bench").glob("*.py"), *(ROOT / "bench").glob("*.sh"), ROOT / "README.md",
             ROOT / "bench" / "README.md"]
    bad = []
    for path in [*_sources(), *more]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\b(STYLE|DESIGN)\b( ?\d|\.md)", line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_10_no_timings_in_comments():
    timing = re.compile(r"\b\d+(\.\d+)? ?(ns|us|µs|ms)\b")
    bad = []
    for path in _sources():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            comment = line.split("//", 1)[1] if "//" in line else (
                line.split("#", 1)[1] if path.suffix in (".py", ".pyi") and "#" in line else "")
            if timing.search(comment):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_10_every_cited_note_is_written_somewhere():
    """A note is written where a line starts with ``Note [title]`` (after a comment marker), alone
    or followed by a colon; it is cited anywhere else. Every cited note is written, once."""
    cited, defined = {}, {}
    head = re.compile(r"^\s*(?://|#)?\s*Note \[([^\]]+)\](?::|\s*$)", re.M)
    for path in _sources():
        text = path.read_text()
        where = str(path.relative_to(ROOT))
        for m in re.finditer(r"Note \[([^\]]+)\]", text):
            # a title broken over two comment lines or two string literals reads as one
            title = " ".join(re.sub(r'"?\s*\n\s*(?://|#)?\s*"?', " ", m.group(1)).split())
            cited.setdefault(title, where)
        for m in head.finditer(text):
            defined.setdefault(m.group(1), []).append(where)
    missing = {k: v for k, v in cited.items() if k not in defined}
    assert not missing, missing
    twice = {k: v for k, v in defined.items() if len(v) > 1}
    assert not twice, twice
