"""What the tests against the peer packages share (tests/test_peers.py: lion-pytorch;
tests/test_peer_adopt.py: torch-adopt; tests/test_peer_schedulefree.py: schedulefree)."""

from __future__ import annotations


def assert_close_to_peer(a, b, what, *, fp32=(1e-6, 1e-7), fp64=(1e-12, 1e-14)):
    """Tensor ``a`` (fusedopt's) against ``b`` (the peer's), with the tolerances of its dtype,
    ``(rtol, scale)``: relative ``rtol`` plus an absolute ``scale`` times the larger of 1 and
    ``b``'s largest finite magnitude; NaN must meet NaN."""
    import torch

    rtol, scale = fp64 if a.dtype == torch.float64 else fp32
    atol = scale * max(float(b.nan_to_num(0.0).abs().max()), 1.0)
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")
