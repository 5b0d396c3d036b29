"""``python -m inflight.tools.serve REPO [...]`` (the same as ``inflight serve``)."""

from __future__ import annotations

import sys

from inflight.tools.serve.launcher import main

if __name__ == "__main__":
    sys.exit(main())
