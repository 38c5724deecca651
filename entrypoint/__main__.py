"""``python -m entrypoint -- CMD ARGS...``: run CMD under the agent (see entrypoint.agent)."""

import sys

from entrypoint.agent import main

sys.exit(main())
