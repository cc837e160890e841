"""The hub's serve service: endpoints at /services/serve/<owner>/<name>/..., behind hub tokens.

JupyterHub starts this module as the managed service "serve". Each request must carry a hub
token (`Authorization: Bearer <token>`, what OpenAI clients send as their api_key): no or an
unknown token is 401; the owner and members of the groups the owner shared the endpoint with
(`aif serve share`) get through, anyone else 403. The request then goes to the endpoint's engine
on its node with the endpoint's own secret, and the answer streams back as it comes (SSE).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
from urllib.parse import urlparse

from jupyterhub.services.auth import HubAuth
from tornado import httputil, web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.ioloop import IOLoop

from ...common.procutil import die_with_parent
from .endpoints import EndpointStore, ServeError
from .idle import IdleWatch

log = logging.getLogger("aif.serve")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length", "host", "cookie", "authorization"}
GROUPS_TTL_S = 10  # a removed member loses access within this time


class Identities:
    """Hub tokens to users, and users to their hub groups, both cached briefly."""

    def __init__(self, hub_auth):
        self.hub_auth = hub_auth
        self._groups = {}

    async def user_for(self, token):
        return await self.hub_auth.user_for_token(token, sync=False)

    async def groups_of(self, name):
        cached = self._groups.get(name)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        client = AsyncHTTPClient()
        response = await client.fetch(f"{self.hub_auth.api_url}/users/{name}", raise_error=False,
                                      headers={"Authorization": f"token {self.hub_auth.api_token}"})
        groups = set(json.loads(response.body).get("groups", [])) if response.code == 200 else set()
        self._groups[name] = (time.monotonic() + GROUPS_TTL_S, groups)
        return groups


class EndpointHandler(web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "POST", "HEAD", "OPTIONS")

    def check_xsrf_cookie(self):
        pass  # token-only: no cookies are read, so no cross-site request can carry a login

    def fail(self, status, message):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        # the OpenAI error shape: clients show error.message
        self.finish(json.dumps({"error": {"message": message, "type": "aif_serve", "code": status}}))

    async def forward(self, owner, name, path):
        identities: Identities = self.settings["identities"]
        token = identities.hub_auth.get_token(self, in_cookie=False)
        if not token:
            return self.fail(401, "a hub token is required: pass it as the API key (Authorization: Bearer <token>)")
        user = await identities.user_for(token)
        if not user or user.get("kind", "user") != "user":
            return self.fail(401, "the hub does not know this token (expired or revoked?)")
        try:
            endpoint = EndpointStore(owner).get(name)
        except (ServeError, KeyError):
            return self.fail(404, f"no endpoint {owner}/{name}")
        caller = user["name"]
        if caller != owner and not set(endpoint.groups) & await identities.groups_of(caller):
            return self.fail(403, f"endpoint {owner}/{name} is not shared with {caller}")
        address = endpoint.address() if not endpoint.stopped else None
        if address is None:
            state = "stopped" if endpoint.stopped else "not started yet (see `aif serve status`)"
            return self.fail(503, f"endpoint {owner}/{name} is {state}")
        watch = self.settings.get("idle_watch")
        if watch:
            watch.seen(endpoint)
        try:
            await self._stream(address, endpoint.secret(), path)
        finally:
            if watch:
                watch.seen(endpoint)  # a long streamed answer is activity until its end

    async def _stream(self, address, secret, path):
        upstream = f"http://{address[0]}:{address[1]}/{path}"
        if self.request.query:
            upstream += "?" + self.request.query
        headers = {k: v for k, v in self.request.headers.get_all() if k.lower() not in HOP_BY_HOP}
        headers["Authorization"] = f"Bearer {secret}"
        body = self.request.body if self.request.method == "POST" else None
        request = HTTPRequest(upstream, method=self.request.method, headers=headers, body=body,
                              allow_nonstandard_methods=True, follow_redirects=False, decompress_response=False,
                              request_timeout=3600, header_callback=self._on_header, streaming_callback=self._on_chunk)
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
            failure = response.error if response.code == 599 else None
        except (HTTPClientError, ConnectionError, OSError) as err:
            failure = err
        if failure is not None:
            return self.fail(502, f"the endpoint's engine at {address[0]}:{address[1]} is not reachable ({failure}); "
                                  "see `aif serve status`")
        self.finish()

    def _on_header(self, line):
        if line.startswith("HTTP/"):
            start = httputil.parse_response_start_line(line.strip())
            self.set_status(start.code, start.reason)
            self.clear_header("Content-Type")
            return
        key, _, value = line.partition(":")
        if line.strip() and key.lower() not in HOP_BY_HOP and key.lower() not in ("date", "server"):
            self.add_header(key.strip(), value.strip())

    def _on_chunk(self, chunk):
        self.write(chunk)
        self.flush()  # each SSE event goes out as the engine sends it

    get = post = head = options = forward


class HealthHandler(web.RequestHandler):
    def get(self):
        self.finish({"serve": "ok"})


def make_app(prefix, identities, idle_watch=None):
    prefix = prefix.rstrip("/")
    return web.Application([
        (prefix + "/?", HealthHandler),
        (prefix + r"/([a-z_][a-z0-9_.-]*)/([a-z][a-z0-9-]*)/(.*)", EndpointHandler),
    ], identities=identities, idle_watch=idle_watch)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="The hub's serve service (aif serve endpoints).")
    parser.add_argument("--idle-timeout", type=int, default=0,
                        help="stop endpoints without requests for this many seconds (0: never)")
    parser.add_argument("--mlflow-url", default="", help="the hub's MLflow service, for the runs of idle stops")
    return parser.parse_args(argv)


async def serve(args):
    die_with_parent()
    # the default is 10 connections at once: a benchmark's 16 concurrent streams would queue
    AsyncHTTPClient.configure(None, max_clients=512)
    hub_auth = HubAuth(cache_max_age=60)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/serve/")
    watch = watching = None
    if args.idle_timeout > 0:
        watch = IdleWatch(args.idle_timeout, hub_auth.api_url, hub_auth.api_token, args.mlflow_url)
        watching = asyncio.ensure_future(watch.run())
        log.info("idle stop after %d s without requests (checked every %.0f s)", args.idle_timeout, watch.interval)
    app = make_app(prefix, Identities(hub_auth), watch)
    bind = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8787"))
    server = app.listen(bind.port, bind.hostname, idle_connection_timeout=3600)
    log.info("serve service on %s (prefix %s)", bind.geturl(), prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if watching:
        watching.cancel()
    server.stop()


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
    args = parse_args(argv)
    IOLoop.current()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
