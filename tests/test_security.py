"""Secrets stay in the environment; servers listen on 127.0.0.1; Ray keeps token auth on."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.openai_server import API_KEY_ENV, ChatServer
from tests.test_faults import REPO, MlflowServer, entry_env, run_entry

SECRET = "sk-test-SECRET-1234567890"


def files_holding(secret: bytes, *roots: Path) -> list[str]:
    """Every file under ``roots`` whose bytes contain ``secret`` (SQLite pages included)."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    if secret in path.read_bytes():
                        found.append(str(path))
                except OSError:  # a socket or a file that vanished meanwhile
                    continue
    return found


@pytest.mark.slow
def test_teacher_api_key_appears_in_no_output_log_or_mlflow_record(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv(API_KEY_ENV, SECRET)
    chat = ChatServer(mode="canned")  # accepts only SECRET
    mlflow = MlflowServer(tmp_path / "mlflow")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths
    config = tmp_path / "build.yaml"
    config.write_text(
        "preset: tiny_test\n"
        "build:\n"
        "  num_questions: 6\n"
        f"  output_dir: {tmp_path / 'traces'}\n"
        "  teachers:\n"
        f"    - {{name: api, kind: openai, model: tiny, base_url: '{chat.base_url}',"
        f" api_key_env: {API_KEY_ENV}, samples_per_question: 2, max_retries: 0}}\n"
        "    - {name: strategy:split, kind: strategy, strategy: split, samples_per_question: 1}\n"
    )
    try:
        env = entry_env(MLFLOW_TRACKING_URI=mlflow.uri, RAY_TMPDIR=str(ray_tmp))
        # As a user's shell: no RAY_AUTH_MODE (an embedded ray.init in this test session sets
        # it in our own environment), so Ray's default decides, and says so.
        env.pop("RAY_AUTH_MODE", None)
        done = run_entry("workflows.build_traces", "--config", str(config), env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Token authentication is enabled" in done.stderr  # the embedded Ray's too
        # The key was really used: every request carried it, in the header only.
        assert len(chat.requests) == 6
        assert all(r["auth"] == f"Bearer {SECRET}" for r in chat.requests)
        client = MlflowClient(mlflow.uri)
        (run,) = client.search_runs([client.get_experiment_by_name("tiny-cpu").experiment_id])
        logged = {**run.data.params, **run.data.tags}
        assert logged["build.teachers.0.api_key_env"] == API_KEY_ENV  # the name, not the value
        assert not [k for k, v in logged.items() if SECRET in k or SECRET in v]
    finally:
        chat.stop()
        mlflow.kill()
    try:
        # MLflow's database, artifacts and server log, the Parquet and JSON outputs, the YAML,
        # Ray's session logs (workers' stdout/stderr included) and the driver's own output.
        assert (tmp_path / "traces").is_dir() and list(ray_tmp.rglob("*.log"))
        assert files_holding(SECRET.encode(), tmp_path, ray_tmp) == []
        assert SECRET not in done.stdout + done.stderr
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _commands(script: str) -> list[str]:
    """The script's lines with backslash continuations joined."""
    return script.replace("\\\n", " ").splitlines()


def test_local_services_listen_on_loopback_and_keep_ray_token_auth():
    lines = _commands((REPO / "ops" / "local_services.sh").read_text())
    (mlflow_cmd,) = [c for c in lines if "mlflow server" in c and not c.lstrip().startswith("#")]
    assert "--host 127.0.0.1" in mlflow_cmd
    (ray_cmd,) = [c for c in lines if "ray start --head" in c and "--port" in c]
    assert "--node-ip-address 127.0.0.1" in ray_cmd and "--dashboard-host 127.0.0.1" in ray_cmd
    assert "RAY_AUTH_MODE=token" in ray_cmd.split("ray start")[0]
    assert any("ray get-auth-token --generate" in c for c in lines)  # a token always exists


def test_nothing_turns_ray_auth_off_or_listens_on_every_interface():
    offenders = []
    for folder in ("ops", "workflows", "ssft"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".sh", ".yaml", ".yml", ".md"):
                text = path.read_text(encoding="utf-8")
                if re.search(r"RAY_AUTH_MODE\s*[=:]\s*['\"]?disabled", text):
                    offenders.append(f"{path}: RAY_AUTH_MODE=disabled")
                if re.search(r"0\.0\.0\.0|--host[= ]['\"]?::['\" ]", text):
                    offenders.append(f"{path}: binds every interface")
    assert offenders == []


def test_test_servers_bind_loopback(tmp_path):
    chat = ChatServer(mode="canned")
    try:
        assert chat.server_address[0] == "127.0.0.1"
    finally:
        chat.stop()
    source = (REPO / "tests" / "test_faults.py").read_text()
    assert '"--host", "127.0.0.1"' in source  # the MlflowServer helper's command line
