"""The project as a cluster user meets it: `ops/local_services.sh` starts a real MLflow server and
a real `ray start --head` (token auth on) on 127.0.0.1, the pipeline and a sweep go in with
`ray job submit`, MLflow holds their runs, and the MLflow UI shows them in headless Chromium.

The services get their own ports, Ray temp dir and auth token, so they never touch the test
session's embedded Ray (and `ray stop`, which would kill it, is never run)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "ops" / "local_services.sh"
ARTIFACTS = Path(os.environ.get("SSFT_TEST_ARTIFACTS", REPO / "test-artifacts"))


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def group_alive(pgid: int) -> bool:
    out = subprocess.run(["ps", "-e", "-o", "pgid="], capture_output=True, text=True).stdout
    return any(int(g) == pgid for g in out.split())


class Services:
    """The environment, addresses and folders of one `local_services.sh start`."""

    def __init__(self, root: Path):
        self.root = root
        self.run_dir = root / "services"
        mlflow_port, ray_port, dash, client, agent = free_ports(5)
        self.mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
        self.jobs = f"http://127.0.0.1:{dash}"
        # Unix socket paths under the Ray temp dir must stay short (~107 bytes).
        self.ray_tmp = Path(f"/tmp/ssft-test-ray-{os.getpid()}")
        self.env = {
            **os.environ,
            "MLFLOW_PORT": str(mlflow_port), "RAY_PORT": str(ray_port),
            "RAY_DASHBOARD_PORT": str(dash), "RAY_CLIENT_PORT": str(client),
            "RAY_AGENT_PORT": str(agent), "RAY_TEMP_DIR": str(self.ray_tmp),
            "RAY_NUM_CPUS": "2", "RAY_AUTH_TOKEN_PATH": str(root / "ray_auth_token"),
            "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
        }  # fmt: skip
        self.env.pop("RAY_ADDRESS", None)
        self.env.pop("MLFLOW_TRACKING_URI", None)

    def script(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(SCRIPT), command, str(self.run_dir)], env=self.env, cwd=REPO,
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip

    def client_env(self) -> dict[str, str]:
        """What `eval "$(bash ops/local_services.sh env)"` gives a user's shell."""
        exports = self.script("env").stdout
        assert f"export RAY_ADDRESS={self.jobs}" in exports, exports
        assert f"export MLFLOW_TRACKING_URI={self.mlflow_uri}" in exports, exports
        assert "export RAY_AUTH_MODE=token" in exports, exports
        return {**self.env, "RAY_ADDRESS": self.jobs, "RAY_AUTH_MODE": "token"}

    def submit(self, name: str, *entrypoint: str) -> str:
        """`ray job submit` with a runtime_env made from ops/runtime_env.yaml; returns the log."""
        runtime_env = yaml.safe_load((REPO / "ops" / "runtime_env.yaml").read_text())
        runtime_env["working_dir"] = str(REPO)
        runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        env_file = self.root / f"{name}-runtime_env.yaml"
        env_file.write_text(yaml.safe_dump(runtime_env))
        proc = subprocess.run(
            ["ray", "job", "submit", "--address", self.jobs, "--runtime-env", str(env_file),
             "--", *entrypoint],
            env=self.client_env(), cwd=REPO, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        log = proc.stdout + proc.stderr
        (self.root / f"{name}.log").write_text(log)
        assert proc.returncode == 0, log[-4000:]
        job_id = re.search(r"Job '(raysubmit_\w+)' succeeded", log)
        assert job_id, log[-4000:]
        status = subprocess.run(
            ["ray", "job", "status", "--address", self.jobs, job_id.group(1)],
            env=self.client_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert f"Job '{job_id.group(1)}' succeeded" in status.stdout, status
        return log


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    svc = Services(tmp_path_factory.mktemp("cluster"))
    started = svc.script("start")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "MLflow (pid" in started.stdout and "Ray head (pid" in started.stdout
        assert "(token auth)" in svc.script("status").stdout
        yield svc
    finally:
        mlflow_pgid = int((svc.run_dir / "mlflow.pgid").read_text())
        ray_pid = int((svc.run_dir / "ray.pid").read_text())
        stopped = svc.script("stop")
        shutil.rmtree(svc.ray_tmp, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not group_alive(mlflow_pgid), "MLflow server processes left after stop"
    assert not group_alive(ray_pid), "Ray head processes left after stop"


def test_unauthenticated_job_client_is_refused(services):
    env = {k: v for k, v in services.env.items() if not k.startswith("RAY_AUTH")}
    proc = subprocess.run(
        ["ray", "job", "list", "--address", services.jobs],
        env={**env, "HOME": str(services.root)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Authentication" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def pipeline_job(services):
    out = services.root / "out"
    log = services.submit(
        "pipeline", sys.executable, "-m", "workflows.pipeline",
        "--config", "tests/configs/tiny_test.yaml",
        f"build.output_dir={out / 'traces'}", f"train.output_dir={out / 'train'}",
        f"eval.output_dir={out / 'eval'}", f"pipeline.output_dir={out / 'cmp'}",
        "build.num_questions=24", "train.epochs=1", "train.questions_per_step=8",
        "eval.num_questions=4", "eval.samples_per_tag=1", "pipeline.methods=ssft,sft_mixed",
    )  # fmt: skip
    return out, log


def test_pipeline_job_succeeds_and_logs_to_the_mlflow_server(services, pipeline_job):
    out, log = pipeline_job
    assert "| ssft | 1 |" in log and "| sft_mixed | 1 |" in log
    assert log.count("[train] ssft: kept") == 1  # a worker's print reaches the job log once
    comparison = json.loads((out / "cmp" / "tiny-cpu" / "comparison.json").read_text())
    assert {r["method"] for r in comparison["runs"]} == {"ssft", "sft_mixed"}

    client = MlflowClient(services.mlflow_uri)
    experiment = client.get_experiment_by_name("tiny-cpu")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert all(r.info.status == "FINISHED" for r in runs.values()), runs
    by_stage = [(r.data.tags.get("stage"), r) for r in runs.values()]
    train = {r.data.tags["method"]: r for stage, r in by_stage if stage == "train"}
    assert set(train) == {"ssft", "sft_mixed"}
    evals = [r for stage, r in by_stage if stage == "eval"]
    assert len(evals) == 2 and all("pass1" in r.data.metrics for r in evals)
    assert sum(n.startswith("build-traces-") for n in runs) == 1 and "pipeline-tiny-cpu" in runs
    # every process of the job logged through the server, tagged with the Ray job
    job_id = re.search(r"Job '(raysubmit_\w+)' succeeded", log).group(1)
    assert {r.data.tags.get("ray_job_id") for r in train.values()} == {job_id}

    ssft = train["ssft"]
    assert ssft.data.params["method"] == "ssft" and ssft.data.metrics["loss"] > 0
    history = client.get_metric_history(ssft.info.run_id, "loss")
    assert len(history) == 3  # 24 questions / 8 per step, logged every step
    assert ssft.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server
    top = {f.path for f in client.list_artifacts(ssft.info.run_id)}
    assert "final_model" in top, top
    listed = client.list_artifacts(ssft.info.run_id, "final_model")
    model_files = {Path(f.path).name for f in listed}
    assert {"config.json", "model.safetensors", "ssft_tags.json"} <= model_files, model_files
    # the artifacts live under the server's artifact store, not in the job's working dir
    stored = list((services.run_dir / "mlartifacts").rglob("model.safetensors"))
    assert len(stored) == 2, stored


@pytest.fixture(scope="module")
def sweep_job(services, pipeline_job):
    out, _ = pipeline_job
    traces = next((out / "traces").rglob("trace_sets.parquet"))
    log = services.submit(
        "sweep", sys.executable, "-m", "workflows.sweep",
        "--config", "workflows/configs/sweep_tiny.yaml", f"data.train_path={traces}",
        f"sweep.output_dir={out / 'sweeps'}", f"train.output_dir={out / 'train'}",
        "sweep.num_tags=2,4", "sweep.costs=mean_nll", "sweep.prefixes=none", "sweep.baselines=",
        "train.epochs=1", "train.questions_per_step=8", "train.checkpoint_every=3",
        "train.warmup_steps=0",
    )  # fmt: skip
    client = MlflowClient(services.mlflow_uri)
    experiment = client.get_experiment_by_name("tiny-cpu-sweep")
    return experiment.experiment_id, client.search_runs([experiment.experiment_id]), log


def test_two_trial_sweep_job_has_a_parent_run_with_two_children(sweep_job):
    _, runs, log = sweep_job
    parents = [r for r in runs if r.data.tags.get("stage") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", log[-3000:]
    parent_id = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert sorted(c.data.tags["num_tags"] for c in children) == ["2", "4"]
    assert all(c.info.status == "FINISHED" and c.data.metrics["loss"] > 0 for c in children)
    assert parents[0].data.tags["sweep.ok"] == "2"


def chromium_path() -> str | None:
    return (
        os.environ.get("SSFT_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )


# Without the background-networking flags Chromium keeps dialling Google's hosts.
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip


def _browser_or_skip() -> str:
    """The system Chromium; skips without one (fails under SSFT_REQUIRE_BROWSER=1, as in CI)."""
    browser = chromium_path()
    if browser is None:
        if os.environ.get("SSFT_REQUIRE_BROWSER") == "1":
            pytest.fail("SSFT_REQUIRE_BROWSER=1 but no chromium found (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium); CI installs it")
    return browser


def test_mlflow_ui_renders_the_sweep_runs_and_a_metric_column(services, sweep_job):
    """Headless Chromium on the experiment's runs page: the trial runs are listed, and the `loss`
    column, added through the Columns menu as a user would, shows their values."""
    browser = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    experiment_id, runs, _ = sweep_job
    parent = next(r.info.run_name for r in runs if r.data.tags.get("stage") == "sweep")
    children = [r for r in runs if r.data.tags.get("stage") == "train"]
    names = sorted(r.info.run_name for r in children)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=browser, args=BROWSER_FLAGS)
        try:
            page = chrome.new_page(viewport={"width": 2400, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(f"{services.mlflow_uri}/#/experiments/{experiment_id}/runs")
            # The trials are nested under the sweep's parent run: expand it.
            name_cells = page.locator('.ag-cell[col-id="attributes.`Run Name`"]')
            name_cells.filter(has_text=parent).locator("button").first.click()
            for name in names:
                page.get_by_text(name, exact=True).first.wait_for()
            # Add the `loss` metric column through the Columns menu, as a user would.
            page.get_by_role("button", name="Columns").click()
            page.get_by_placeholder("Search columns").fill("loss")
            node = page.locator("[class*='tree-treenode']").filter(has_text=re.compile(r"^loss$"))
            node.locator("[class*='tree-checkbox']").first.click()
            page.keyboard.press("Escape")
            header = page.locator('.ag-header-cell[col-id="metrics.`loss`"]').first
            header.wait_for()
            cells = page.locator('.ag-cell[col-id="metrics.`loss`"]').all_inner_texts()
            page.screenshot(path=str(ARTIFACTS / "mlflow_ui_sweep.png"), full_page=True)
            dom = page.content()
        finally:
            chrome.close()
    (ARTIFACTS / "mlflow_ui_sweep.html").write_text(dom)
    for name in [parent, *names]:
        assert name in dom
    shown = sorted(float(c) for c in cells if c.strip() not in ("", "-"))
    assert shown == pytest.approx(sorted(r.data.metrics["loss"] for r in children), abs=0.01)
    assert (ARTIFACTS / "mlflow_ui_sweep.png").stat().st_size > 10_000


def test_mlflow_ui_shows_the_pipeline_tree_a_sample_table_and_the_training_plots(
    services, pipeline_job
):
    """Headless Chromium on the pipeline job's runs: one parent run whose expander shows the
    build, training and evaluation runs; the evaluation's page links its training run; its
    sample table renders; a training run's plot opens. Screenshots in test-artifacts/."""
    browser = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    client = MlflowClient(services.mlflow_uri)
    experiment_id = client.get_experiment_by_name("tiny-cpu").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment_id])}
    parent = runs["pipeline-tiny-cpu"]
    children = sorted(n for n, r in runs.items()
                      if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)  # fmt: skip
    train, evaluation = runs["ssft-n4-s0"], runs["eval-ssft-n4-s0"]
    assert {train.info.run_name, evaluation.info.run_name} <= set(children)
    assert evaluation.data.tags["ssft.train_run_id"] == train.info.run_id
    table_file = client.download_artifacts(evaluation.info.run_id, "eval/samples.json",
                                           str(services.root))  # fmt: skip
    table = json.loads(Path(table_file).read_text())
    first_question = table["data"][0][table["columns"].index("question_id")]
    plots = [f.path for f in client.list_artifacts(train.info.run_id, "plots")]
    assert plots, "the training run logged no plot"
    base = f"{services.mlflow_uri}/#/experiments/{experiment_id}/runs"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=browser, args=BROWSER_FLAGS)
        try:
            page = chrome.new_page(viewport={"width": 1800, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(base)
            name_cells = page.locator('.ag-cell[col-id="attributes.`Run Name`"]')
            name_cells.filter(has_text="pipeline-tiny-cpu").first.wait_for()
            collapsed = name_cells.all_inner_texts()
            # The tree: only the parent at the top; its expander shows every stage's run.
            name_cells.filter(has_text="pipeline-tiny-cpu").locator("button").first.click()
            for name in children:
                page.get_by_text(name, exact=True).first.wait_for()
            page.screenshot(path=str(ARTIFACTS / "mlflow_ui_pipeline_tree.png"), full_page=True)
            # The evaluation's page: its description links the training run it evaluated.
            page.goto(f"{base}/{evaluation.info.run_id}")
            link = page.get_by_role("link", name=train.info.run_name, exact=True).first
            link.wait_for()
            href = link.get_attribute("href") or ""
            # Its generations, as a table the UI renders.
            page.goto(f"{base}/{evaluation.info.run_id}/artifacts/eval/samples.json")
            page.get_by_text(first_question, exact=True).first.wait_for()
            page.screenshot(path=str(ARTIFACTS / "mlflow_ui_samples.png"), full_page=True)
            # A training run's plot.
            page.goto(f"{base}/{train.info.run_id}/artifacts/{plots[0]}")
            # The plot itself (its alt text is the artifact path), drawn, not a loading skeleton.
            page.locator(f'img[alt="{plots[0]}"]').first.wait_for()
            page.wait_for_function(
                "path => [...document.images].some(i => i.alt === path && i.naturalWidth > 100)",
                arg=plots[0],
            )
            page.screenshot(path=str(ARTIFACTS / "mlflow_ui_training_plot.png"), full_page=True)
        finally:
            chrome.close()
    assert not any(n.endswith(("ssft-n4-s0", "sft_mixed-n4-s0")) for n in collapsed), collapsed
    assert train.info.run_id in href
    for shot in ("pipeline_tree", "samples", "training_plot"):
        assert (ARTIFACTS / f"mlflow_ui_{shot}.png").stat().st_size > 10_000
