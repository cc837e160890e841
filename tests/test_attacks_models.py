"""Attack cases: corrupt model files never crash the process, a kernel or the hub.

The suite's reference models (benchmarks/reference/models: ONNX, TorchScript, torch.export) are damaged
in a few hundred seeded ways (truncation, bit flips, random bytes, damaged zip structure and
members for the torch archives, damaged protobuf fields for ONNX, external data pointing
outside the model's folder) and each goes through the suite's real path: `load_model`, the
backend, the one-sample probe the runner makes before LoadGen. Property: the suite's own error
naming the file (ModelError / DataError; AccuracyError for NaN outputs), or a model that runs.

The loop runs in a child process (this file run as a script), so that a native crash (segfault,
abort in ONNX Runtime or libtorch) shows as a negative exit code instead of killing pytest.
"""

import io
import json
import random
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import requests
from aifactory.hub.testing.kernel import execute
from aifactory.hub.testing.platform import start_server, unique_user
from tornado.ioloop import IOLoop

SEED = 20261121
REFERENCE = ("digits_mlp", "digits_cnn", "breast_cancer_mlp", "diabetes_mlp")
DATASET = {"digits_mlp": "digits", "digits_cnn": "digits", "breast_cancer_mlp": "breast_cancer",
           "diabetes_mlp": "diabetes"}
CASES = {".onnx": 240, ".pt": 200, ".pt2": 40}


# --- mutations ---------------------------------------------------------------------------------

def truncate(rng, data):
    return data[:rng.randrange(len(data))]


def flip_bits(rng, data):
    out = bytearray(data)
    for _ in range(rng.choice((1, 2, 8, 64))):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def overwrite(rng, data):
    out = bytearray(data)
    start = rng.randrange(len(out))
    size = min(len(out) - start, rng.choice((4, 64, 1024)))
    out[start:start + size] = rng.choice((bytes(size), b"\xff" * size, rng.randbytes(size)))
    return bytes(out)


def random_bytes(rng, data):
    return rng.randbytes(rng.choice((0, 1, 16, len(data))))


BYTE_MUTATIONS = (truncate, flip_bits, overwrite, random_bytes)


def _rezip(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, content in members:
            archive.writestr(name, content)
    return buffer.getvalue()


def _members(data):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def zip_member_damage(rng, data):
    """One member (pickle, code, tensor data, version) damaged with a byte mutation."""
    members = _members(data)
    index = rng.randrange(len(members))
    name, content = members[index]
    members[index] = (name, rng.choice(BYTE_MUTATIONS)(rng, content) if content else b"\x00")
    return _rezip(members)


def zip_member_drop(rng, data):
    members = _members(data)
    del members[rng.randrange(len(members))]
    return _rezip(members)


def zip_member_replace(rng, data):
    """A member swapped for plausible but wrong content (other code, a future version, junk pickle)."""
    members = _members(data)
    index = rng.randrange(len(members))
    name, _ = members[index]
    members[index] = (name, rng.choice((
        b"99999\n", b"def forward(self, x):\n    return torch.ops.aten.no_such_op(x)\n", b"\x80\x04N.",
        b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.", b"{}", b"\x00" * 4096)))
    return _rezip(members)


def zip_structure_damage(rng, data):
    """The zip's own records: central directory, end record, local headers."""
    out = bytearray(data)
    where = rng.choice(("end", "central", "local"))
    if where == "end":
        position = out.rfind(b"PK\x05\x06")
        out[position + rng.randrange(4, 22)] ^= 0xFF
    elif where == "central":
        positions = [i for i in range(len(out) - 4) if out[i:i + 4] == b"PK\x01\x02"]
        position = rng.choice(positions)
        out[position + rng.randrange(4, 46)] ^= 0xFF
    else:
        positions = [i for i in range(len(out) - 4) if out[i:i + 4] == b"PK\x03\x04"]
        position = rng.choice(positions)
        out[position + rng.randrange(0, 30)] ^= 0xFF
    return bytes(out)


ZIP_MUTATIONS = (zip_member_damage, zip_member_drop, zip_member_replace, zip_structure_damage)


def onnx_proto_damage(rng, data):
    """A structurally valid protobuf with a wrong model in it."""
    import onnx

    model = onnx.load_from_string(data)
    graph = model.graph
    choice = rng.randrange(12)
    if choice == 0:
        model.ir_version = rng.choice((0, 99, 2**40))
    elif choice == 1:
        model.opset_import[0].version = rng.choice((0, 9999))
    elif choice == 2:
        rng.choice(graph.node).op_type = rng.choice(("NoSuchOp", "", "Loop"))
    elif choice == 3:
        node = rng.choice([n for n in graph.node if n.input])
        node.input[rng.randrange(len(node.input))] = "missing_tensor"
    elif choice == 4 and graph.initializer:
        graph.initializer.remove(rng.choice(graph.initializer))
    elif choice == 5 and graph.initializer:
        tensor = rng.choice(graph.initializer)
        if tensor.dims:
            tensor.dims[0] = rng.choice((0, 1, 2**31, 2**62))
        else:
            tensor.dims.append(rng.choice((0, 2**31)))
    elif choice == 6 and graph.initializer:
        tensor = rng.choice(graph.initializer)
        if tensor.raw_data:
            tensor.raw_data = tensor.raw_data[:rng.randrange(len(tensor.raw_data))]
        else:
            tensor.dims.append(7)
    elif choice == 7 and graph.initializer:
        tensor = rng.choice(graph.initializer)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
        del tensor.external_data[:]
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", rng.choice(("../../../../etc/passwd", "/etc/shadow", "../x.bin",
                                                         "%2e%2e/secret", "nonexistent.bin"))
    elif choice == 8:
        dim = graph.input[0].type.tensor_type.shape.dim
        if len(dim) > 1:
            dim[1].dim_value = rng.choice((0, 2**40))
    elif choice == 9:
        graph.input[0].type.tensor_type.elem_type = rng.choice((0, 8, 999))
    elif choice == 10:
        node = rng.choice([n for n in graph.node if n.input])
        node.input[0] = node.output[0]  # a cycle
    else:
        del graph.output[:]
    return model.SerializeToString()


def mutations_for(suffix):
    if suffix == ".onnx":
        return BYTE_MUTATIONS + (onnx_proto_damage,) * 4
    return BYTE_MUTATIONS + ZIP_MUTATIONS * 2


# --- the child: load and probe every case through the suite --------------------------------------

def try_model(path, dataset):
    """'refused' (the suite's error naming the file), 'ran', or 'unclear: ...' for anything else."""
    from aifactory.benchmarks.backends import create_backend
    from aifactory.benchmarks.config import BackendConfig, ModelConfig
    from aifactory.benchmarks.errors import AccuracyError, DataError, ModelError
    from aifactory.benchmarks.models import load_model
    from aifactory.benchmarks.runner import _probe

    try:
        model = load_model(ModelConfig(path=str(path)))
        backend = create_backend(BackendConfig(kind="onnxruntime" if model.kind == "onnx" else "torch",
                                               device="cpu", threads=1), model, "backends[0]")
        try:
            data = dataset.fit_to(model.input_shape, getattr(backend, "input_dtype", None) or model.input_dtype,
                                  model.source)
            _probe(backend, backend.stage(data.x[:4]), model)
        finally:
            backend.close()
    except (ModelError, DataError) as err:
        return "refused" if str(path) in str(err) else f"unclear: file not named: {err}"
    except AccuracyError:
        return "refused"  # it ran, and the suite refused its NaN outputs
    except Exception as err:  # noqa: BLE001 - exactly what this test looks for
        return f"unclear: {type(err).__name__}: {str(err)[:300]}"
    return "ran"


def fuzz(workdir, cases=CASES, seed=SEED):
    import torch

    from aifactory.benchmarks.config import DataConfig
    from aifactory.benchmarks.data import load_dataset
    from aifactory.benchmarks.reference import MODELS_DIR

    torch.set_num_threads(1)
    rng = random.Random(seed)
    datasets = {name: load_dataset(DataConfig(source=f"sklearn:{name}")) for name in set(DATASET.values())}
    tally, unclear = Counter(), []
    workdir = Path(workdir)
    for suffix, count in cases.items():
        for index in range(count):
            reference = rng.choice(REFERENCE)
            mutation = rng.choice(mutations_for(suffix))
            original = (MODELS_DIR / f"{reference}{suffix}").read_bytes()
            target = workdir / f"case{index:04d}-{reference}-{mutation.__name__}{suffix}"
            target.write_bytes(mutation(rng, original))
            outcome = try_model(target, datasets[DATASET[reference]])
            tally[f"{suffix}:{outcome.split(':')[0]}"] += 1
            tally[f"{suffix}:tried"] += 1
            if outcome.startswith("unclear"):
                unclear.append(f"{target.name}: {outcome}")
            target.unlink()
    return {"tally": dict(tally), "unclear": unclear}


def test_corrupt_model_files_are_refused_by_name_or_run_never_crash(tmp_path, capsys):
    started = time.monotonic()
    done = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, f"the fuzz process died with code {done.returncode}:\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    tally = report["tally"]
    assert report["unclear"] == [], "\n".join(report["unclear"][:20])
    for suffix, count in CASES.items():
        assert tally[f"{suffix}:tried"] == count == tally.get(f"{suffix}:refused", 0) + tally.get(f"{suffix}:ran", 0)
    assert list(tmp_path.iterdir()) == []
    with capsys.disabled():
        print(f"\ncorrupt-model attack cases ({time.monotonic() - started:.0f} s): {json.dumps(tally, sort_keys=True)}")


# --- the same through a real kernel on the platform ------------------------------------------------

LOAD_CORRUPT = """
import tempfile
from pathlib import Path
from aifactory.benchmarks.config import ModelConfig
from aifactory.benchmarks.errors import ModelError
from aifactory.benchmarks.models import load_model
from aifactory.benchmarks.reference import MODELS_DIR

folder = Path(tempfile.mkdtemp(prefix="aif-corrupt-"))
named = []
for suffix in (".onnx", ".pt", ".pt2"):
    data = (MODELS_DIR / f"digits_mlp{suffix}").read_bytes()
    for label, damaged in (("half", data[:len(data) // 2]), ("flipped", bytes(b ^ 0x5A for b in data))):
        bad = folder / f"{label}{suffix}"
        bad.write_bytes(damaged)
        try:
            load_model(ModelConfig(path=str(bad)))
            named.append("loaded")
        except ModelError as err:
            named.append(str(bad) in str(err))
print("named", named)
"""




def test_corrupt_models_in_a_kernel_leave_the_kernel_and_the_hub_alive(platform):
    user = unique_user("corrupt")
    platform.add_user(user)
    token = platform.user_token(user)
    headers = {"Authorization": f"token {token}"}
    server = start_server(platform, user)
    try:
        kernel = requests.post(f"{server}/api/kernels", headers=headers, json={}, timeout=60)
        kernel.raise_for_status()
        kernel_id = kernel.json()["id"]

        def run(code):
            return IOLoop().run_sync(lambda: execute(server, kernel_id, headers, code), timeout=120)

        assert "named [True, True, True, True, True, True]" in run(LOAD_CORRUPT)
        # uncaught in a cell: an error in the notebook, not a dead kernel
        with pytest.raises(AssertionError, match=r"(?s)kernel error.*ModelError.*half\.pt"):
            run("load_model(ModelConfig(path=str(folder / 'half.pt')))")
        assert run("print('alive', 6 * 7)").strip() == "alive 42"
        state = requests.get(f"{server}/api/kernels/{kernel_id}", headers=headers, timeout=30).json()
        assert state["execution_state"] == "idle"
        assert platform.check_health() == {"hub": "ok", "proxy": "ok", "mlflow": "ok"}
    finally:
        platform.api("DELETE", f"/users/{user}/server")


if __name__ == "__main__":
    print(json.dumps(fuzz(sys.argv[1])))
