"""A small program that the local runtime's tests run as workloads.

Modes: ``serve`` (TCP listener), ``http`` (HTTP server), ``echo`` (an HTTP/1.1 server that
answers every request with who it is and what it got), ``exit``, ``dump`` (writes its argv,
environment and config files as JSON, then exits) and ``sleep``. Options shared by all modes
record what happened in files, so that tests can assert on the state of the world.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

SLEEPER = "import time; time.sleep(600)"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def increment(path: Path) -> int:
    count = int(path.read_text()) + 1 if path.exists() else 1
    write_atomic(path, str(count))
    return count


def wait_for_file(path: Path) -> None:
    while not path.exists():
        time.sleep(0.02)


def port_from(env_name: str) -> int:
    return int(os.environ[env_name])


def serve_tcp(port: int) -> None:
    with socket.create_server(("127.0.0.1", port)) as server:
        while True:
            conn, _ = server.accept()
            conn.close()


def serve_http(port: int, ready_file: Path | None) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/status":  # the status contract: who answers, from its environment
                keys = ("GYRE_OWNER", "GYRE_WORKLOAD", "GYRE_REPLICA_INDEX", "GYRE_REPLICAS")
                doc = json.dumps({k: os.environ.get(k) for k in keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(doc)))
                self.end_headers()
                self.wfile.write(doc)
                return
            ok = ready_file is None or ready_file.exists()
            body = b"ok\n" if ok else b"not ready\n"
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    http.server.ThreadingHTTPServer.allow_reuse_address = True
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler) as server:
        server.serve_forever()


def serve_echo(port: int, requests_log: Path | None) -> None:
    """Any method, any path: a JSON answer naming this workload and echoing the request;
    ``requests_log`` gets the same document as a line per request."""
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a model server would

        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            doc = {
                "workload": os.environ["GYRE_WORKLOAD"],
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": self.rfile.read(length).decode(),
            }
            body = json.dumps(doc).encode()
            if requests_log is not None:
                with lock, open(requests_log, "a") as f:
                    f.write(json.dumps(doc) + "\n")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Set-Cookie", f"served-by={doc['workload']}")
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer  # noqa: N815 - the stdlib names them

        def log_message(self, format: str, *args: object) -> None:
            pass

    http.server.ThreadingHTTPServer.allow_reuse_address = True
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler) as server:
        server.serve_forever()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["serve", "http", "echo", "exit", "dump", "sleep"])
    p.add_argument("--port-env", default="GYRE_PORT_MAIN")
    p.add_argument("--ready-file", type=Path, help="http: answer 2xx only once it exists")
    p.add_argument("--listen-after", type=Path, help="serve: listen only once it exists")
    p.add_argument("--code", type=int, default=0, help="exit: the exit code")
    p.add_argument("--fail-times", type=int, help="exit: fail while --counter <= this, then 0")
    p.add_argument("--fail-replica", type=int, help="exit with 1 if this is my replica index")
    p.add_argument("--out", type=Path, help="dump: where to write")
    p.add_argument("--requests-log", type=Path, help="echo: append each request to this file")
    p.add_argument("--pid-file", type=Path, help="write my pid (and grandchildren's) as JSON")
    p.add_argument("--counter", type=Path, help="a file counting how often I started")
    p.add_argument("--record-port", type=Path, help="append the --port-env port to this file")
    p.add_argument("--say", help="print this at start")
    p.add_argument("--grandchildren", action="store_true", help="start two sleeping children")
    p.add_argument("--ignore-term", action="store_true")
    args, extra = p.parse_known_args()

    if args.say:
        print(args.say, flush=True)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    starts = increment(args.counter) if args.counter else 0
    if args.record_port:
        with open(args.record_port, "a") as f:
            f.write(os.environ[args.port_env] + "\n")
    grandchildren: list[int] = []
    if args.grandchildren:
        # One stays in the process group; the other escapes it with a session of its own.
        for new_session in (False, True):
            child = subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=new_session)
            grandchildren.append(child.pid)
    if args.pid_file:
        write_atomic(args.pid_file, json.dumps({"pid": os.getpid(), "grandchildren": grandchildren}))
    if args.fail_replica is not None and int(os.environ["GYRE_REPLICA_INDEX"]) == args.fail_replica:
        print(f"replica {args.fail_replica} fails", flush=True)
        return 1

    if args.mode == "serve":
        if args.listen_after:
            wait_for_file(args.listen_after)
        serve_tcp(port_from(args.port_env))
    elif args.mode == "http":
        serve_http(port_from(args.port_env), args.ready_file)
    elif args.mode == "echo":
        serve_echo(port_from(args.port_env), args.requests_log)
    elif args.mode == "exit":
        if args.fail_times is not None:
            return 1 if starts <= args.fail_times else 0
        return int(args.code)
    elif args.mode == "dump":
        conf = Path(os.environ["CONF"]) if "CONF" in os.environ else None
        doc = {
            "argv": sys.argv,
            "extra": extra,
            "executable": sys.executable,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "config": {f.name: f.read_text() for f in conf.iterdir()} if conf else {},
        }
        assert args.out is not None
        write_atomic(args.out, json.dumps(doc))
        return int(args.code)
    elif args.mode == "sleep":
        while True:
            time.sleep(600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
