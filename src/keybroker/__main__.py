from __future__ import annotations

import sys

from keybroker.cli import main

sys.exit(main())
