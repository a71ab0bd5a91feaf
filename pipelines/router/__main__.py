"""``python -m gyre.pipelines.router``: the weighted HTTP router (see `server`)."""

import logging

from gyre.pipelines.router.config import RouterConfig
from gyre.pipelines.router.server import serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(RouterConfig.load())
