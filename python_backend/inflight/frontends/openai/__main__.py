"""``python -m inflight.frontends.openai``: the same as ``inflight openai``."""

import sys

from inflight.frontends.openai.server import main

sys.exit(main())
