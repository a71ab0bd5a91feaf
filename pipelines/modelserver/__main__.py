"""``python -m gyre.pipelines.modelserver``: a model artifact behind KServe's model server."""

import logging

from gyre.pipelines.modelserver.config import ModelServerConfig
from gyre.pipelines.modelserver.server import serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(ModelServerConfig.load())
