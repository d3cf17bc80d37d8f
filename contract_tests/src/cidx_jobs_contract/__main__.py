"""``python -m cidx_jobs_contract URL [pytest args]``; see :func:`cidx_jobs_contract.main`."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
