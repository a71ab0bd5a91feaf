"""``python -m gyre.pipelines.collector``: the HTTP event collector (see `server`)."""

import logging

from gyre.pipelines._common.env import parse_command_line
from gyre.pipelines.collector.config import CollectorConfig
from gyre.pipelines.collector.server import serve

if __name__ == "__main__":
    parse_command_line("gyre.pipelines.collector", CollectorConfig)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(CollectorConfig.load())
