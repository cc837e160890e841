"""The hub-managed MLflow service: MLflow's tracking server behind the hub's login.

JupyterHub starts this module as the managed service "mlflow" (`python -m
aifactory.hub.tracking.service`). It starts the MLflow server (server.py, with MLflow's auth
app) on a loopback port and serves /services/mlflow/ itself (handlers.py):

- every request is authenticated by the hub: browsers by the hub's OAuth, API clients by a hub
  token (MLFLOW_TRACKING_TOKEN); nobody reaches MLflow without a hub identity;
- the identity is passed to MLflow's auth app (auth_plugin.py), which enforces permissions:
  experiments are private to their creator unless shared;
- runs are attributed to the hub user (attribution.py);
- owners share an experiment read-only with a hub group (POST aif/share, shares.py), kept in
  sync with the group's membership (backends.py).
"""

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from urllib.parse import urlparse

from tornado.ioloop import IOLoop

from ...common.files import PRIVATE_UMASK
from ...common.procutil import stop_process_group
from .backends import Backends
from .handlers import make_app
from .server import start_mlflow_server, store_dirs, wait_for_mlflow
from .shares import ShareStore

log = logging.getLogger("aif.mlflow")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--backend-store-uri", required=True)
    parser.add_argument("--auth-db-uri", required=True)
    parser.add_argument("--artifacts-destination", required=True)
    parser.add_argument("--mlflow-port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--assistant", action="store_true",
                        help="let users reach MLflow's assistant (it runs tools on this host)")
    parser.add_argument("--prefix", default=os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/mlflow/"))
    return parser.parse_args(argv)


async def serve(args):
    # the hub runs this module through common/guarded.py, which armed the death-of-parent guard
    # before this module's imports: armed here, it missed a hub that died during them
    os.umask(PRIVATE_UMASK)  # the stores, artifacts and logs are the platform's account's alone

    secret = secrets.token_urlsafe(32)
    proc = start_mlflow_server(args, args.mlflow_port, secret)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        Path(args.state_dir).mkdir(parents=True, exist_ok=True)
        backends = Backends(
            mlflow_url=f"http://127.0.0.1:{args.mlflow_port}", prefix=args.prefix.rstrip("/") + "/", secret=secret,
            hub_api_url=os.environ["JUPYTERHUB_API_URL"], hub_token=os.environ["JUPYTERHUB_API_TOKEN"],
            shares=ShareStore(Path(args.state_dir) / "bridge.sqlite"), store_dirs=store_dirs(args),
        )
        # listen at once (the hub gives a managed service only seconds to answer); requests
        # get 503 until the MLflow server, which takes far longer to start, is ready
        app = make_app(args.prefix, backends, assistant=args.assistant)
        bind = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:5000"))
        server = app.listen(bind.port, bind.hostname, max_body_size=4 * 1024**3, max_buffer_size=4 * 1024**3)
        await wait_for_mlflow(backends.client, backends.mlflow_base, proc)
        backends.ready = True
        log.info("MLflow service on %s, MLflow server pid %s", bind.geturl(), proc.pid)
        watcher = asyncio.ensure_future(asyncio.to_thread(proc.wait))
        done, _ = await asyncio.wait([asyncio.ensure_future(stop.wait()), watcher], return_when=asyncio.FIRST_COMPLETED)
        if watcher in done:
            log.error("MLflow server exited (code %s); stopping the service so the hub reports it", proc.returncode)
        server.stop()
    finally:
        stop_process_group(proc)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
    args = parse_args(argv if argv is not None else sys.argv[1:])
    IOLoop.current()  # tornado's loop on asyncio
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
