"""``python -m inflight.frontends.openai``: the same as ``inflight openai``."""

import sys

from .server import main

sys.exit(main())
