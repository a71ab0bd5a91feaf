"""Argument handling for the trainer's two roles; the config is parsed once, here."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from gyre.pipelines.trainer import config as config_module
from gyre.pipelines.trainer.config import ConfigError, load_config
from gyre.pipelines.trainer.topology import GangError, identity_from_env

RENDEZVOUS_PORT_ENV = "GYRE_PORT_RENDEZVOUS"
STORE_PORT_ENV = "GYRE_PORT_STORE"
DEFAULT_RENDEZVOUS_PORT = 29400

USAGE = "usage: python -m gyre.pipelines.trainer {launcher|worker}"


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(
        level=os.environ.get("GYRE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if list(argv) in (["--help"], ["-h"]):
        print(f"{USAGE}\n\nlauncher: serves the rendezvous and the run's /status; worker: one rank.\n")
        print(config_module.__doc__)
        return 0
    if len(argv) != 1 or argv[0] not in ("launcher", "worker"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        cfg = load_config()
        if argv[0] == "launcher":
            from gyre.pipelines.trainer.launcher import run_launcher

            port = int(os.environ.get(RENDEZVOUS_PORT_ENV) or DEFAULT_RENDEZVOUS_PORT)
            store = os.environ.get(STORE_PORT_ENV)
            return run_launcher(cfg, port, int(store) if store else None)
        from gyre.pipelines.trainer.worker import run_worker

        return run_worker(cfg, identity_from_env())
    except (ConfigError, GangError) as e:
        logging.getLogger("gyre.trainer").error("%s", e)
        return 1
