"""The experiments behind ``python -m fusedopt``: what the kernels are for, run for real.

- :mod:`~fusedopt.demo.run` -- ``python -m fusedopt demo``: one MLP trained on Fashion-MNIST by
  every optimizer (and by batch / mini-batch / stochastic SGD, and under learning-rate decays), with
  a table, PNG plots and a JSON of the loss curves.
- :mod:`~fusedopt.demo.data` -- the idx loader with the sha256 check of the Fashion-MNIST release.
- :mod:`~fusedopt.demo.mlp` -- the network: NumPy forward and backward passes.
- :mod:`~fusedopt.demo.quadratic` -- ``python -m fusedopt example``: every update rule on an
  ill-conditioned quadratic, checked against :mod:`fusedopt.reference`.

Nothing here is imported by ``import fusedopt``; the demo's optional dependencies (tqdm, matplotlib,
threadpoolctl: ``pip install "fusedopt[demo]"``) are imported only when the demo runs.
"""
