"""``python -m gyre.pipelines.router``: the weighted HTTP router (see `server`)."""

import logging

from gyre.pipelines._common.env import parse_command_line
from gyre.pipelines.router.config import RouterConfig
from gyre.pipelines.router.server import serve

if __name__ == "__main__":
    parse_command_line("gyre.pipelines.router", RouterConfig)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(RouterConfig.load())
