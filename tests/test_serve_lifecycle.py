"""`aif serve` lifecycle without a cluster: what the hub's home page and the session panel show,
and the operator's idle-timeout setting. The idle stop itself runs on the real platform, cluster
and engine in tests/test_serve.py."""

import json
import os
import pwd
import time

import pytest
from traitlets.config import Config

from aifactory.extensions.panels import SessionPanel, render_endpoints
from aifactory.hub.platform.config import ConfigError, ServeService
from aifactory.hub.platform.hubconfig import SERVE_SERVICE, finish_hub
from aifactory.hub.serving.endpoints import Endpoint, EndpointStore
from aifactory.hub.serving.idle import IdleWatch
from aifactory.hub.serving.overview import HomePageEndpoints, summaries

USER = pwd.getpwuid(os.getuid()).pw_name
REQUEST = {"profile": "cpu", "partition": "cpu", "hours": 2, "minutes": 120}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("AIF_SERVE_DIR", str(tmp_path / "serve"))
    return EndpointStore(USER)


def _endpoint(store, name, job_id="", started=None, **fields):
    endpoint = store.create(Endpoint(name=name, owner=USER, model="/models/m", served_model_name=name,
                                     engine="vllm", request=REQUEST, job_id=job_id, **fields))
    if started is not None:
        (endpoint.folder / "address.json").write_text(json.dumps({"host": "10.0.0.5", "port": 8001,
                                                                  "node": "n1", "started": started}))
    return endpoint


def test_summaries_come_from_the_records_with_url_and_walltime_left(store):
    now = time.time()
    _endpoint(store, "queued", job_id="7")
    _endpoint(store, "serving", job_id="8", started=now - 300)
    _endpoint(store, "over", job_id="9", started=now - 3 * 3600)
    _endpoint(store, "idle", job_id="10", stopped=now, stop_reason="after 60 s without requests (the hub's idle timeout)")
    rows = {r["name"]: r for r in summaries(USER, "https://hub.example.eu/", now=now)}
    assert rows["serving"]["state"] == "running" and rows["serving"]["walltime_left"] == "1 h 55 min"
    assert rows["serving"]["url"] == f"https://hub.example.eu/services/serve/{USER}/serving/v1"
    assert rows["queued"]["state"] == "waiting" and rows["queued"]["walltime_left"] == "—"
    assert rows["over"]["state"] == "ended" and rows["over"]["walltime_left_s"] == 0
    assert rows["idle"]["state"] == "stopped" and "60 s without requests" in rows["idle"]["detail"]


def test_the_home_page_list_is_read_only_when_the_page_uses_it(store):
    _endpoint(store, "one", job_id="1")
    lazy = HomePageEndpoints(USER, "http://hub")
    assert lazy._rows is None  # JupyterHub built it for some page: nothing read yet
    assert [r["name"] for r in lazy] == ["one"] and len(lazy) == 1
    assert list(HomePageEndpoints(None)) == []  # the login page: nobody logged in
    assert list(HomePageEndpoints("no-such-account-x")) == []


def test_the_panel_renders_the_endpoints_escaped_and_says_how_to_start_one():
    row = {"name": "m", "state": "stopped", "detail": "<script>x</script>", "url": "http://h/a&b",
           "walltime_left": "—"}
    page = render_endpoints([row])
    assert "<script>" not in page and "&lt;script&gt;" in page and "http://h/a&amp;b" in page
    assert "aif serve start" in render_endpoints([])


def test_the_session_panel_shows_the_users_endpoints(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://hub.example.eu/services/mlflow")
    _endpoint(store, "chat", job_id="5", started=time.time())
    panel = SessionPanel(live=False)
    assert f"https://hub.example.eu/services/serve/{USER}/chat/v1" in panel.endpoints.value
    assert "running" in panel.endpoints.value and "1 h 59 min" in panel.endpoints.value
    panel.close()


def test_the_idle_timeout_is_the_operators_and_reaches_the_serve_service():
    assert ServeService().idle_timeout == 3600
    with pytest.raises(ConfigError, match="ServeService.idle_timeout: -1"):
        ServeService(idle_timeout=-1)
    c = Config()
    c.JupyterHub.services = [{"name": SERVE_SERVICE, "command": ["python", "-m", "aifactory.hub.serving.front"]}]
    c.ServeService.idle_timeout = 120
    finish_hub(c)
    assert c.JupyterHub.services[0]["command"][-2:] == ["--idle-timeout", "120"]
    assert IdleWatch(8, "http://hub/api", "t").interval == 1.0
    assert IdleWatch(3600, "http://hub/api", "t").interval == 60.0
