"""``python -m gyre.pipelines.features``: submit the feature job to Spark."""

from __future__ import annotations

import sys

from gyre.pipelines.features.submit import main

if __name__ == "__main__":
    sys.exit(main())
