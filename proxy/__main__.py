"""``python -m proxy``: the ``toneguard`` command without the console script on PATH."""

import sys

from proxy.service.cli import main

sys.exit(main())
