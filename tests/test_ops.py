"""The ops/ folder: manifests parse, name entrypoints and configs that exist; the services script
starts and stops MLflow cleanly (slow)."""

import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

OPS = Path("ops")
SCRIPT = OPS / "local_services.sh"
MANIFESTS = ["runtime_env.yaml", "kuberay/rayjob.yaml", "cluster.yaml"]


def entrypoints(text: str) -> list[tuple[str, str | None]]:
    """Every ``python -m <module> [--config <path>]`` in ``text`` (comments included)."""
    text = re.sub(r"\\\s*\n\s*#?\s*", " ", text)  # join shell continuation lines
    found = re.findall(r"python -m ([\w.]+)((?:\s+--config\s+\S+)?)", text)
    return [(module, config.split()[-1] if config else None) for module, config in found]


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_parse_and_name_entrypoints_that_exist(name):
    text = (OPS / name).read_text()
    assert isinstance(yaml.safe_load(text), dict)
    named = entrypoints(text)
    assert named, f"{name} names no `python -m` entrypoint"
    for module, config in named:
        assert Path(*module.split(".")).with_suffix(".py").is_file(), module
        assert config is None or Path(config).is_file(), config


def test_readme_commands_name_files_that_exist():
    text = (OPS / "README.md").read_text()
    for module, config in entrypoints(text):
        assert Path(*module.split(".")).with_suffix(".py").is_file(), module
        assert config is None or Path(config).is_file(), config
    for name in [*MANIFESTS, "local_services.sh", "setup.sh"]:
        assert f"ops/{name}" in text or name in text


def test_rayjob_has_head_workers_shared_volume_tracking_secret_and_token_auth():
    job = yaml.safe_load((OPS / "kuberay" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert entrypoints(spec["entrypoint"]) == [
        ("workflows.pipeline", "workflows/configs/tiny_cpu.yaml")
    ]
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    pods = [cluster["headGroupSpec"]["template"]["spec"]]
    pods += [group["template"]["spec"] for group in cluster["workerGroupSpecs"]]
    assert len(pods) >= 2
    for pod in pods:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        for container in pod["containers"]:
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert mounts == {"shared": "/mnt/shared"} and "shared" in claims
            env = {e["name"]: e for e in container["env"]}
            assert "secretKeyRef" in env["MLFLOW_TRACKING_URI"]["valueFrom"]
    for key in ("train.output_dir", "build.output_dir", "eval.output_dir"):
        assert f"{key}=/mnt/shared/" in spec["entrypoint"]


def test_runtime_env_and_cluster_config():
    env = yaml.safe_load((OPS / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "." and "pip" not in env
    assert env["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http")
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray wants strings
    cluster = yaml.safe_load((OPS / "cluster.yaml").read_text())
    assert cluster["provider"]["type"] and cluster["head_start_ray_commands"]
    assert any("RAY_AUTH_MODE=token" in c for c in cluster["head_start_ray_commands"])
    assert any("RAY_AUTH_MODE=token" in c for c in cluster["worker_start_ray_commands"])
    assert "/mnt/shared" in (OPS / "cluster.yaml").read_text()


def test_services_script_has_its_commands_and_rejects_others():
    text = SCRIPT.read_text()
    for command in ("start", "stop", "status"):
        assert re.search(rf"^\s+{command}\)|[ (]{command} \|", text, re.M), command
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in text and "setsid" in text
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    bad = subprocess.run(["bash", str(SCRIPT), "restart"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
    env = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True, check=True)
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in env.stdout
    assert "export RAY_ADDRESS=http://127.0.0.1:8265" in env.stdout
    assert "RAY_AUTH_TOKEN" in env.stdout


def _group(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid="], capture_output=True, text=True).stdout
    return [int(p) for p, g in (line.split() for line in out.splitlines()) if int(g) == pgid]


@pytest.mark.slow
def test_mlflow_server_starts_answers_and_stops_with_its_whole_group(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SSFT_SERVICES": "mlflow", "MLFLOW_PORT": str(port)}
    run_dir = tmp_path / "services"
    start = subprocess.run(["bash", str(SCRIPT), "start", str(run_dir)], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    pgid = int((run_dir / "mlflow.pgid").read_text())
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in start.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
            assert reply.status == 200
        assert len(_group(pgid)) > 1  # the server and its worker processes share the group
        status = subprocess.run(["bash", str(SCRIPT), "status", str(run_dir)], env=env,
                                capture_output=True, text=True)  # fmt: skip
        assert "mlflow: up" in status.stdout
    finally:
        stop = subprocess.run(["bash", str(SCRIPT), "stop", str(run_dir)], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert stop.returncode == 0, stop.stderr
    deadline = time.monotonic() + 5
    while _group(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _group(pgid) == []
    assert not (run_dir / "mlflow.pgid").exists()
    assert (run_dir / "mlflow.db").exists()


def test_setup_pins_every_package_that_decides_results():
    """Package versions move results (README "The main job"): ops/setup.sh installs under
    ops/constraints-cpu.txt by default, which pins each result package once, exactly; torch
    is TORCH_SPEC's to pin (a GPU machine keeps its CUDA build)."""
    from packaging.requirements import Requirement

    from ssft.tracking import RESULT_PACKAGES

    setup = (OPS / "setup.sh").read_text()
    (default,) = re.findall(r'^CONSTRAINTS="\$\{CONSTRAINTS-(\S+)\}"$', setup, re.M)
    assert Path(default) == OPS / "constraints-cpu.txt"
    assert '${CONSTRAINTS:+-c "$CONSTRAINTS"}' in setup
    lines = [line for line in Path(default).read_text().splitlines()
             if line.strip() and not line.startswith("#")]  # fmt: skip
    pins = [Requirement(line) for line in lines]
    names = [r.name.lower().replace("_", "-") for r in pins]
    assert len(names) == len(set(names))
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in pins)
    assert "torch" not in names
    assert set(RESULT_PACKAGES) - {"torch", "vllm"} <= set(names)
