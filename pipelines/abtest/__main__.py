"""``python -m gyre.pipelines.abtest``: the online Experiment's A/B analysis (see `server`)."""

import logging

from gyre.pipelines._common.env import parse_command_line
from gyre.pipelines.abtest.config import AbTestConfig
from gyre.pipelines.abtest.server import serve

if __name__ == "__main__":
    parse_command_line("gyre.pipelines.abtest", AbTestConfig)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(AbTestConfig.load())
