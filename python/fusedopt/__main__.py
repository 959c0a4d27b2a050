"""``python -m fusedopt COMMAND``: ``demo`` (the main job) or ``example``.

Without a command it prints the usage and exits with status 0.
"""

from __future__ import annotations

import sys

USAGE = """\
usage: python -m fusedopt COMMAND [options]

commands:
  demo      train one MLP on Fashion-MNIST with every optimizer of fusedopt.optim (SGD with and
            without momentum and Nesterov, and the adaptive ones), batch / mini-batch / stochastic
            SGD and learning-rate decays; print a table, write PNG plots and a JSON of the loss
            curves; and the optimizers' paths on 2-D loss surfaces (--only trajectories needs no
            data, --gif animates one)
            (python -m fusedopt demo --help; needs pip install "fusedopt[demo]" for bars and plots)
  example   a few seconds: every update rule on an ill-conditioned quadratic, checked against the
            float64 reference
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    if command == "demo":
        from .demo.run import main as demo

        return demo(rest)
    if command == "example":
        from .demo.quadratic import main as example

        return example(rest)
    if command in (None, "-h", "--help"):
        print(USAGE, end="")
        return 0
    print(USAGE + f"\npython -m fusedopt: error: unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
