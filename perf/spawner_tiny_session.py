#!/usr/bin/env python3
"""A featherweight stand-in for jupyterhub-singleuser, used only to hold many sessions open.

perf/spawner_compare.py counts squeue calls with 1, 10 and 50 *running* sessions; 50 real
JupyterLab servers would need minutes of CPU to start on a 2-core VM and say nothing more about
scheduler load. Run by batchspawner-singleuser, which reports the port to the hub first; this
answers every HTTP request with 200 on that port so the hub considers the server up.
"""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse


class Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


port = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"]).port
ThreadingHTTPServer(("0.0.0.0", port), Ok).serve_forever()
