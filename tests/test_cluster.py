"""The Slurm mini-cluster: real munged + slurmctld + slurmd under a temp dir (needs root)."""

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from aifactory.hub.cluster import ClusterError, MiniCluster
from aifactory.hub.cluster.cli import cluster as cluster_cli
from aifactory.hub.testing.ci import require_binary, require_root

pytestmark = pytest.mark.slurm
USER = "aif-ctest"


def traversable_tmpdir():
    """pytest's tmp dirs are 0700; munged and job users must traverse the cluster's state dir."""
    path = Path(tempfile.mkdtemp(prefix="aif-cluster-"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def mini():
    require_root()
    require_binary("slurmctld", "slurmctld")
    require_binary("munged", "munge")
    state = traversable_tmpdir()
    mini = MiniCluster(state)
    try:
        result = CliRunner().invoke(cluster_cli, ["up", "--state-dir", str(state)])
        assert result.exit_code == 0, result.output
        mini.add_user(USER)
        yield mini
    finally:
        mini.down()
        MiniCluster.remove_user(USER)
        shutil.rmtree(state, ignore_errors=True)


def submit(mini, *args, user=USER):
    out = mini.run(["runuser", "-u", user, "--", "sbatch", "--parsable", *args]).stdout
    return out.strip().split(";")[0]


def wait_finished(mini, job_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not mini.run(["squeue", "-h", "-j", job_id, "-t", "PD,R,CG"], check=False).stdout.strip():
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still active after {timeout}s")


def test_status_reports_partitions_and_gpus(mini):
    result = CliRunner().invoke(cluster_cli, ["status", "--state-dir", str(mini.state_dir)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert all(info["daemons"].values())
    partitions = {line.split()[1].rstrip("*") for line in info["nodes"] if line}
    assert partitions == {"gpu", "cpu"}
    assert all("gpu:h200:4" in line for line in info["nodes"] if line)


def test_gpu_job_runs_as_the_user_with_its_own_cuda_devices(mini):
    home = f"/home/{USER}"
    job = submit(mini, "-p", "gpu", "--gres=gpu:h200:2", "-o", f"{home}/env-%j.out",
                 "--wrap", "id -un; echo CVD=$CUDA_VISIBLE_DEVICES")
    wait_finished(mini, job)
    lines = open(f"{home}/env-{job}.out").read().split()
    assert lines[0] == USER
    assert lines[1] in ("CVD=0,1", "CVD=1,2", "CVD=2,3", "CVD=0,2", "CVD=0,3", "CVD=1,3")


def test_more_gpus_than_the_node_has_are_refused_by_slurm(mini):
    result = mini.run(["runuser", "-u", USER, "--", "sbatch", "-p", "gpu", "--gres=gpu:h200:5", "--wrap", "true"],
                      check=False)
    assert result.returncode != 0 and "Requested node configuration is not available" in result.stderr


def test_refuses_a_state_dir_other_users_cannot_reach(tmp_path):
    require_root()
    with pytest.raises(ClusterError, match="not traversable by other users"):
        MiniCluster(tmp_path / "hidden").up()


def test_down_cancels_jobs_and_up_again_is_idempotent():
    require_root()
    require_binary("slurmctld", "slurmctld")
    state = traversable_tmpdir()
    other = MiniCluster(state).up()
    try:
        assert other.is_up()
        job = other.run(["sbatch", "--parsable", "-p", "cpu", "-o", "/dev/null", "--wrap", "sleep 300"]).stdout.strip()
        other.up()  # already up: no-op
        assert other.run(["squeue", "-h", "-j", job, "-o", "%i"]).stdout.strip() == job
    finally:
        other.down()
        shutil.rmtree(state, ignore_errors=True)
    assert not other.is_up()
    assert not any(other.status()["daemons"].values())
