"""The ``cidx-jobs`` command line (``python -m cidx_jobs``): ``demo``, ``info`` and the
operator's commands (``list``, ``show``, ``stats``, ``cleanup``, ``recover``, ``cancel``,
``fail``, ``migrate``, ``doctor``, ``backup``); see ``cidx-jobs --help``."""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
