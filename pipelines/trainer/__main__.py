"""``python -m gyre.pipelines.trainer launcher|worker``: the TrainingJob's entrypoint."""

from __future__ import annotations

import sys

from gyre.pipelines.trainer.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
