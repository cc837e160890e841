"""Running code inside a user's server: a real kernel, over the Jupyter websocket API."""

import datetime
import json
import uuid

import requests
from tornado.httpclient import HTTPRequest
from tornado.ioloop import IOLoop
from tornado.websocket import websocket_connect


def run_in_kernel(server_url, token, code, timeout=120):
    """Execute `code` in a new kernel of the server; returns its stdout. Raises on error."""
    headers = {"Authorization": f"token {token}"}
    kernel = requests.post(f"{server_url}/api/kernels", headers=headers, json={}, timeout=60)
    kernel.raise_for_status()
    kernel_id = kernel.json()["id"]
    try:
        return IOLoop().run_sync(lambda: execute(server_url, kernel_id, headers, code), timeout=timeout)
    finally:
        requests.delete(f"{server_url}/api/kernels/{kernel_id}", headers=headers, timeout=60)


async def execute(server_url, kernel_id, headers, code):
    """Run `code` in a running kernel over its websocket; returns its stdout, raises on an error."""
    ws_url = server_url.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
    conn = await websocket_connect(HTTPRequest(ws_url, headers=headers))
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test", "session": uuid.uuid4().hex,
                   "version": "5.3", "date": datetime.datetime.now(datetime.timezone.utc).isoformat()},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    out, error = [], None
    while True:
        raw = await conn.read_message()
        if raw is None:
            raise AssertionError("kernel websocket closed")
        msg = json.loads(raw)
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["header"]["msg_type"]
        if kind == "stream":
            out.append(msg["content"]["text"])
        elif kind == "error":
            error = "\n".join(msg["content"]["traceback"])
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            break
    conn.close()
    if error:
        raise AssertionError(f"kernel error:\n{error}")
    return "".join(out)
