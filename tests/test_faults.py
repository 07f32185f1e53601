"""Faults with real services on 127.0.0.1: MLflow down at start or dying mid-run, output folders
that refuse writes, a full disk, a trace shard killed mid-write.

The MLflow server here is a real ``mlflow server`` in its own process group (as in
``ops/local_services.sh``), killed by group. Entrypoints run as real subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ssft.tracking import TrackingUnavailable, check_tracking_uri

REPO = Path(__file__).resolve().parents[1]
TINY = "tests/configs/tiny_test.yaml"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 in its own process group; ``kill`` stops the group."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = root, port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "MLFLOW_DISABLE_TELEMETRY": "true"}  # fmt: skip
        self.log = (root / "server.log").open("ab")
        self.proc = subprocess.Popen(
            ["mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # its own group: kill() reaches its worker processes too
        )  # fmt: skip
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        # Polls /health (~15 s on these machines); the bound only stops a hung test.
        for _ in range(600):
            if self.proc.poll() is not None:
                break
            try:
                check_tracking_uri(self.uri, timeout_s=1.0)
                return
            except TrackingUnavailable:
                time.sleep(0.5)
        self.kill()
        tail = (self.root / "server.log").read_text(errors="replace")[-2000:]
        pytest.fail(f"mlflow server did not come up:\n{tail}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.log.close()


def entry_env(**extra: str) -> dict[str, str]:
    """The environment of an entrypoint subprocess: no test fault dir, no outside cluster."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSFT_FAULT_DIR", "RAY_ADDRESS")}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", **extra}


def run_entry(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True
    )


# --- MLflow unreachable at start -----------------------------------------------------------


def _entry_args(name: str, out: Path, traces: Path) -> list[str]:
    dirs = [f"{stage}.output_dir={out / stage}" for stage in ("build", "train", "eval", "pipeline")]
    return {
        "workflows.train": ["--config", TINY, f"data.train_path={traces}", "name=t", *dirs],
        "workflows.build_traces": ["--config", TINY, *dirs],
        "workflows.evaluate": ["--config", TINY, "name=t", *dirs],
        "workflows.pipeline": ["--config", TINY, *dirs],
        "workflows.sweep": ["--config", "workflows/configs/sweep_tiny.yaml",
                            f"data.train_path={traces}", f"sweep.output_dir={out / 'sweeps'}",
                            *dirs],
        "workflows.compare": [str(out / "eval" / "t"), "--out", str(out / "compare")],
    }[name]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "module",
    ["workflows.train", "workflows.build_traces", "workflows.evaluate", "workflows.pipeline",
     "workflows.sweep", "workflows.compare"],
)  # fmt: skip
def test_entrypoint_stops_before_compute_when_mlflow_does_not_answer(
    module, tmp_path, known_modes_traces
):
    uri = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    done = run_entry(module, *_entry_args(module, out, known_modes_traces),
                     env=entry_env(MLFLOW_TRACKING_URI=uri))  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: MLflow tracking server at {uri} did not answer" in done.stderr
    assert "bash ops/local_services.sh start" in done.stderr
    assert "Traceback" not in done.stderr
    # Nothing was started or written: no Ray, no output folder, no checkpoint.
    assert "Started a local Ray instance" not in done.stdout + done.stderr
    assert not out.exists()


# --- MLflow dies mid-run -------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_dying_mid_training_loses_no_training_and_says_what_was_not_logged(
    ray_local, known_modes_traces, tmp_path
):
    from mlflow import MlflowClient

    from tests.test_train_ray import tiny, training_log
    from workflows.train import run

    server = MlflowServer(tmp_path / "mlflow")
    pause = ray_local / "pause-train-step-5"  # rank 0 waits before step 6 (0-based 5)
    reached = ray_local / "pause-train-step-5.reached"

    def kill_mlflow_while_paused() -> None:
        while not reached.exists():
            time.sleep(0.1)
        server.kill()  # steps 1-5 and the step-4 checkpoint are done at this point
        pause.unlink()

    pause.write_text("")
    killer = threading.Thread(target=kill_mlflow_while_paused, daemon=True)
    killer.start()
    cfg = tiny(known_modes_traces, tmp_path, "orphaned")
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", server.uri)
            final_dir = run(cfg)
        killer.join()
    finally:
        server.kill()
        for path in (pause, reached):
            path.unlink(missing_ok=True)

    # Training is whole: every step once, the final model and the checkpoints on disk.
    log = training_log(final_dir)
    assert [entry[0] for entry in log["data_log"]] == list(range(12))
    assert (final_dir / "model.safetensors").exists() and (final_dir / "ssft_tags.json").exists()
    run_dir = tmp_path / "train" / "orphaned"
    assert list(run_dir.glob("checkpoint_*/ssft_state.json"))
    # What MLflow did not get is listed locally, call by call.
    records = [json.loads(x) for x in (run_dir / "unlogged.jsonl").read_text().splitlines()]
    unlogged_steps = [r["step"] for r in records if r["call"] == "log_metrics"]
    assert unlogged_steps == list(range(6, 13))
    calls = {r["call"] for r in records}
    assert {"log_text", "log_figure", "log_artifact", "set_tag", "set_terminated"} <= calls
    assert any(r.get("local_path") == str(final_dir) for r in records)
    assert (run_dir / "unlogged" / "config.yaml").exists()  # texts are kept, not lost

    # The same store, served again: it holds steps 1-5; together with the list, every step.
    again = MlflowServer(tmp_path / "mlflow")
    try:
        client = MlflowClient(again.uri)
        (mlrun,) = client.search_runs(
            [client.get_experiment_by_name("tiny-cpu").experiment_id],
            filter_string="tags.`ssft.run_key` = 'orphaned'",
        )
        logged = [m.step for m in client.get_metric_history(mlrun.info.run_id, "loss")]
    finally:
        again.kill()
    assert logged == [1, 2, 3, 4, 5]
    assert mlrun.info.status == "RUNNING"  # its end was not logged either: set_terminated above
    assert {r["run_id"] for r in records} == {mlrun.info.run_id}


# --- The driver killed, the same command rerun -------------------------------------------------


def recorded_step(snapshot: Path) -> int | None:
    """The step of the newest checkpoint Ray Train's controller has recorded, if any."""
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # not written yet, or caught mid-write
    return int(latest["metrics"]["step"]) if latest else None


def test_a_killed_drivers_run_is_resumed_by_the_rerun_with_one_writer(known_modes_traces, tmp_path):
    """SIGKILL the driver while rank 0 trains (paused at step 5, the lock held); the rerun
    waits for the orphaned worker or takes over its dead lock with a warning, resumes from a
    checkpoint (never from scratch), trains every batch exactly once, and releases the lock."""
    faults = tmp_path / "faults"
    faults.mkdir()
    pause = faults / "pause-train-step-5"
    pause.write_text("")
    out = tmp_path / "train"
    args = ["-m", "workflows.train", "--config", TINY, f"data.train_path={known_modes_traces}",
            "name=orphan", f"train.output_dir={out}", "train.checkpoint_every=4",
            "train.epochs=2", "train.questions_per_step=8"]  # fmt: skip
    env = entry_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db", SSFT_FAULT_DIR=str(faults))
    first = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not pause.with_name(pause.name + ".reached").exists():
            assert time.monotonic() < deadline and first.poll() is None, "never reached step 5"
            time.sleep(0.5)
        # Ray Train resumes from the checkpoints its controller has recorded; on a slow
        # machine rank 0 can reach step 5 before the controller has written down step 4's.
        snapshot = out / "orphan" / "checkpoint_manager_snapshot.json"
        while recorded_step(snapshot) != 4:
            assert time.monotonic() < deadline and first.poll() is None, "step 4 never recorded"
            time.sleep(0.5)
        lock = out / "orphan" / ".writer.lock"
        holder = json.loads(lock.read_text())["pid"]
        first.kill()  # the driver only: its embedded Ray and the worker are left to die
        first.wait()
    finally:
        first.kill()
    pause.unlink()
    rerun = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert f"taking over the lock of PID {holder}" in log or "waiting up to" in log
    # From step 4's checkpoint, or a later one: the killed driver's worker may outlive it for
    # a few steps (its lock makes the rerun wait), and on a loaded machine it can finish.
    resumed = re.search(r"resuming at step (\d+)/12", log)
    assert resumed and int(resumed.group(1)) >= 4, log[-4000:]
    data_log = json.loads((out / "orphan" / "final_model" / "training_log.json").read_text())
    assert [entry[0] for entry in data_log["data_log"]] == list(range(12))
    assert not lock.exists()


# --- Another Ray on the machine --------------------------------------------------------------


def test_a_training_beside_another_ray_instance_prints_no_traceback(
    ray_local, known_modes_traces, tmp_path
):
    """The test session's embedded Ray is the other instance. Ray Train's placement-group
    cleaner used to look for "the" Ray and raise "Found multiple active Ray instances", and
    to warn at every poll that the state API (no dashboard) was unavailable."""
    assert ray_local  # started: a second Ray on this machine while the entrypoint runs
    done = run_entry(
        "workflows.train", "--config", TINY, f"data.train_path={known_modes_traces}",
        "name=beside", f"train.output_dir={tmp_path / 'train'}", "train.epochs=2",
        "train.questions_per_step=16", env=entry_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db"),
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "Found multiple active Ray instances" not in out and "Traceback" not in out
    assert "Failed to query Ray Train Controller actor state" not in out
    assert out.count("[train] ssft: kept") == 1  # Ray Train's print patch doubled every line


# --- Output folders that refuse writes; a full disk -----------------------------------------


@pytest.mark.slow
def test_output_folder_under_a_regular_file_is_a_clear_error_before_compute(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "traces"
    done = run_entry(
        "workflows.build_traces", "--config", TINY, f"build.output_dir={target}",
        env=entry_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: build.output_dir={target} cannot be written (Not a directory" in done.stderr
    assert "Traceback" not in done.stderr
    assert "Started a local Ray instance" not in done.stdout + done.stderr
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_output_folder_is_a_clear_error_and_keeps_earlier_outputs(tmp_path):
    from workflows.cli import OutputNotWritable, check_output_dir

    folder = tmp_path / "traces"
    folder.mkdir()
    (folder / "trace_sets.parquet").write_bytes(b"earlier output")
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputNotWritable, match=r"Permission denied"):
            check_output_dir(folder, "build.output_dir")
    finally:
        folder.chmod(0o755)
    assert (folder / "trace_sets.parquet").read_bytes() == b"earlier output"


# A real full disk, scaled down: RLIMIT_FSIZE makes writes past N bytes fail (EFBIG once
# SIGXFSZ is ignored), for root too. The entrypoints' error path (run_main) reports it.
DISK_FULL = r"""
import resource, signal, sys
from pathlib import Path
from ssft.data.trace_building import merge_shards
from workflows.cli import run_main
build_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (out.stat().st_size // 4, resource.RLIM_INFINITY))
run_main(lambda: merge_shards(build_dir, 1, out))  # new content: shard 0 alone
"""


def test_full_disk_while_merging_trace_sets_is_a_clear_error_and_keeps_the_old_file(
    tmp_path, known_modes_traces
):
    from ssft.data.trace_building import ShardStats, merge_shards, write_shard
    from ssft.data.trace_set import read_trace_sets

    sets = read_trace_sets(known_modes_traces)
    build_dir = tmp_path / "traces" / "train-abc"
    write_shard(build_dir, 0, sets[:24], ShardStats())
    write_shard(build_dir, 1, sets[24:], ShardStats())
    out = build_dir / "trace_sets.parquet"
    merge_shards(build_dir, 2, out)  # the earlier output
    before = out.read_bytes()
    done = subprocess.run([sys.executable, "-c", DISK_FULL, str(build_dir), str(out)], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: could not write {out}: " in done.stderr and "File too large" in done.stderr
    assert "earlier ones are intact" in done.stderr and "Traceback" not in done.stderr
    assert out.read_bytes() == before  # byte-identical
    assert sorted(p.name for p in build_dir.iterdir()) == ["shards", "trace_sets.parquet"]


# --- A trace shard killed mid-write ----------------------------------------------------------

# Builds shards 0 and 2 of the build, then writes shard 1 under a file-size limit of half its
# Parquet size: SIGXFSZ (its default action restored) kills the process in that write.
KILLED_MID_WRITE = r"""
import json, resource, signal, sys
from pathlib import Path
from ssft.config import parse_cli
from ssft.data.question_sources import load_questions
from ssft.data.trace_building import build_key, build_shard, write_shard
from ssft.data.trace_set import write_trace_sets
cfg = parse_cli(sys.argv[1:])
b = cfg.build
build_dir = Path(b.output_dir).resolve() / f"{b.split}-{build_key(b, cfg.seed)}"
qs = load_questions(b)
shards = [qs[i : i + b.questions_per_shard] for i in range(0, len(qs), b.questions_per_shard)]
for index in (0, 2):
    write_shard(build_dir, index, *build_shard(shards[index], b, cfg.seed))
sets, stats, _ = build_shard(shards[1], b, cfg.seed)
scratch = build_dir / "scratch.parquet"
write_trace_sets(scratch, sets)
size = scratch.stat().st_size
scratch.unlink()
print(json.dumps({"build_dir": str(build_dir), "limit": size // 2}), flush=True)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it by default; the OS kills
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # and no core file
resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, resource.RLIM_INFINITY))
write_shard(build_dir, 1, sets, stats)
print("not killed", flush=True)
"""


@pytest.mark.slow
def test_shard_killed_mid_write_is_never_visible_and_the_build_resumes(
    ray_local, tmp_path, monkeypatch, capsys
):
    from ssft.data.trace_set import read_trace_sets
    from tests.test_build_traces import tiny_build
    from workflows.build_traces import run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    argv = ["--config", TINY, f"build.output_dir={tmp_path / 'traces'}",
            "build.num_questions=24", "build.questions_per_shard=8"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, *argv], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == -signal.SIGXFSZ, done.stdout + done.stderr[-3000:]
    info = json.loads(done.stdout.splitlines()[0])
    shards = Path(info["build_dir"]) / "shards"
    # Killed mid-write: a partial file exists, but only under its temp name.
    (partial,) = shards.glob(".shard-00001.parquet.tmp-*")
    assert 0 < partial.stat().st_size <= info["limit"]
    assert not (shards / "shard-00001.parquet").exists()
    assert (shards / "shard-00000.parquet").exists() and (shards / "shard-00002.parquet").exists()

    capsys.readouterr()
    out = run(tiny_build(tmp_path))  # the same build: resumes, rebuilds shard 1 only
    printed = capsys.readouterr().out
    assert "removed 1 partial file(s)" in printed
    assert "resuming: 2 of 3 shards already on disk" in printed
    assert out.parent == Path(info["build_dir"])
    ids = [s.question_id for s in read_trace_sets(out)]
    rejected = [r["question_id"] for r in json.loads((out.parent / "rejected_questions.json")
                                                         .read_text())]  # fmt: skip
    assert len(ids) == len(set(ids)) and not set(ids) & set(rejected)
    assert len(ids) + len(rejected) == 24  # every question exactly once
    assert not list(out.parent.glob("**/.*tmp*"))
