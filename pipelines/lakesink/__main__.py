"""``python -m gyre.pipelines.lakesink``: the exactly-once Parquet lake sink (see `sink`)."""

import logging

from gyre.pipelines._common.env import parse_command_line
from gyre.pipelines.lakesink.config import LakeSinkConfig
from gyre.pipelines.lakesink.sink import serve

if __name__ == "__main__":
    parse_command_line("gyre.pipelines.lakesink", LakeSinkConfig)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(LakeSinkConfig.load())
