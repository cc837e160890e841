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

import aiohttp
from jupyterhub.services.auth import HubAuth
from tornado import web
from tornado.httpclient import AsyncHTTPClient
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

from ...common.procutil import die_with_parent
from .endpoints import EndpointStore, ServeError
from .idle import IdleWatch

log = logging.getLogger("aif.serve")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length", "host", "cookie", "authorization"}
GROUPS_TTL_S = 10  # a removed member loses access within this time
UPSTREAM_KEEPALIVE_S = 30


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
        session: aiohttp.ClientSession = self.settings["upstream"]
        try:
            async with session.request(self.request.method, upstream, headers=headers, data=body,
                                       allow_redirects=False) as response:
                self._copy_head(response)
                async for chunk in response.content.iter_any():
                    self.write(chunk)
                    await self.flush()  # each SSE event goes out as the engine sends it
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            if self._headers_written:  # mid-stream: cut the connection, so the caller sees an error, not an end
                log.warning("the engine at %s:%s broke off a response to %s: %s", *address, path, err)
                self.request.connection.stream.close()
                return
            return self.fail(502, f"the endpoint's engine at {address[0]}:{address[1]} is not reachable "
                                  f"({err or type(err).__name__}); see `aif serve status`")
        except StreamClosedError:
            return  # the caller went away; leaving the block closed the engine connection, which aborts it
        self.finish()

    def _copy_head(self, response):
        self.set_status(response.status, response.reason)
        self.clear_header("Content-Type")
        for key, value in response.headers.items():
            if key.lower() not in HOP_BY_HOP and key.lower() not in ("date", "server"):
                self.add_header(key, value)

    get = post = head = options = forward


class HealthHandler(web.RequestHandler):
    def get(self):
        self.finish({"serve": "ok"})


def make_app(prefix, identities, upstream, idle_watch=None):
    prefix = prefix.rstrip("/")
    return web.Application([
        (prefix + "/?", HealthHandler),
        (prefix + r"/([a-z_][a-z0-9_.-]*)/([a-z][a-z0-9-]*)/(.*)", EndpointHandler),
    ], identities=identities, upstream=upstream, idle_watch=idle_watch)


def upstream_session():
    """Kept-alive connections to the engines: a new connection per request cost more than the rest of the hop."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE_S)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                                 skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=3600))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="The hub's serve service (aif serve endpoints).")
    parser.add_argument("--idle-timeout", type=int, default=0,
                        help="stop endpoints without requests for this many seconds (0: never)")
    parser.add_argument("--mlflow-url", default="", help="the hub's MLflow service, for the runs of idle stops")
    return parser.parse_args(argv)


async def serve(args):
    die_with_parent()
    hub_auth = HubAuth(cache_max_age=60)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/serve/")
    upstream = upstream_session()
    watch = watching = None
    if args.idle_timeout > 0:
        watch = IdleWatch(args.idle_timeout, hub_auth.api_url, hub_auth.api_token, args.mlflow_url)
        watching = asyncio.ensure_future(watch.run())
        log.info("idle stop after %d s without requests (checked every %.0f s)", args.idle_timeout, watch.interval)
    app = make_app(prefix, Identities(hub_auth), upstream, watch)
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
    await upstream.close()


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
    args = parse_args(argv)
    IOLoop.current()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
