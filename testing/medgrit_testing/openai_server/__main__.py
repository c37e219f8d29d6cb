"""``python -m medgrit_testing.openai_server``: run the fake provider (see :mod:`.cli`)."""

import sys

from .cli import main

sys.exit(main())
