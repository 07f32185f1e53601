"""Training under Ray Train (Train V2, gloo on CPU): workers agree (DDP and FSDP), runs resume,
MLflow fills."""

import hashlib
import json
from collections import Counter

import pytest
import torch
from mlflow import MlflowClient
from ray.train import TrainingFailedError
from safetensors.torch import load_file

from ssft.config import load_config
from ssft.data.trace_set import read_trace_sets
from ssft.train.batching import epoch_order, steps_per_epoch
from tests.conftest import last_wins
from workflows.train import run

pytestmark = pytest.mark.slow


def tiny(path, tmp_path, name, *overrides):
    return load_config(
        "tests/configs/tiny_test.yaml",
        last_wins(
            f"data.train_path={path}", f"name={name}", f"train.output_dir={tmp_path / 'train'}",
            "train.epochs=2", "train.checkpoint_every=4", "train.log_every=1",
            "train.questions_per_step=8", "train.warmup_steps=0", *overrides,
        ),
    )  # fmt: skip


def training_log(final_dir):
    return json.loads((final_dir / "training_log.json").read_text())


def assert_every_batch_trained_once(log: dict, cfg) -> None:
    """Count the final model's data log against the step plan: every step once, in order,
    each step's questions exactly the planned batch, every question once per epoch."""
    ids = [s.question_id for s in read_trace_sets(cfg.data.train_path)]
    per_step = cfg.train.questions_per_step
    per_epoch = steps_per_epoch(len(ids), per_step)
    assert [entry[0] for entry in log["data_log"]] == list(range(cfg.train.epochs * per_epoch))
    trained_per_epoch: Counter = Counter()
    for step, epoch, trained, digest in log["data_log"]:
        batch = divmod(step, per_epoch)[1]
        order = epoch_order(len(ids), cfg.seed, epoch)
        planned = sorted(ids[i] for i in order[batch * per_step : (batch + 1) * per_step])
        assert digest == hashlib.sha256("\n".join(planned).encode()).hexdigest()[:16], step
        trained_per_epoch[epoch] += trained  # questions the ranks really trained this step
    assert trained_per_epoch == {e: len(ids) for e in range(cfg.train.epochs)}


@pytest.fixture(scope="module")
def reference(ray_local, known_modes_traces, tmp_path_factory):
    """One uninterrupted single-worker run: the trajectory the others must reproduce."""
    tmp_path = tmp_path_factory.mktemp("reference")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    final_dir = run(tiny(known_modes_traces, tmp_path, "reference"))
    mp.undo()
    return training_log(final_dir), tmp_path


def test_two_workers_match_one_worker_and_log_to_mlflow(reference, known_modes_traces, tmp_path):
    ref_log, ref_dir = reference
    uri = f"sqlite:///{ref_dir / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        two = training_log(run(tiny(known_modes_traces, tmp_path, "two", "train.num_workers=2")))
    assert two["data_log"] == ref_log["data_log"] and two["steps"] == 12
    torch.testing.assert_close(
        torch.tensor(two["losses"]), torch.tensor(ref_log["losses"]), rtol=1e-4, atol=1e-6
    )
    client = MlflowClient(uri)
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("tiny-cpu").experiment_id])}  # fmt: skip
    assert set(runs) == {"reference", "two"}
    ref_run = runs["reference"]
    assert ref_run.info.status == "FINISHED"
    assert ref_run.data.tags["method"] == "ssft" and ref_run.data.tags["num_tags"] == "4"
    assert ref_run.data.tags["pass1_tag"].startswith("<think")
    assert ref_run.data.params["train.lr"] == "0.003"
    history = client.get_metric_history(ref_run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, 13))
    assert "matching/entropy" in ref_run.data.metrics
    paths = {f.path for f in client.list_artifacts(ref_run.info.run_id, "plots")}
    assert paths == {"plots/tag_by_teacher.png", "plots/tag_by_strategy.png"}
    final = {f.path for f in client.list_artifacts(ref_run.info.run_id, "final_model")}
    assert "final_model/model.safetensors" in final and "final_model/ssft_tags.json" in final


def test_killed_run_resumes_under_the_same_name(reference, ray_local, known_modes_traces, tmp_path):
    ref_log, _ = reference
    cfg = tiny(known_modes_traces, tmp_path, "killed")
    (ray_local / "crash-train-step-6").write_text("")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        with pytest.raises(TrainingFailedError):
            run(cfg)  # rank 0 dies at step 6; no restarts allowed (max_failures=0)
        assert not (ray_local / "crash-train-step-6").exists()
        resumed = training_log(run(cfg))  # same name: resumes from the step-4 checkpoint
    assert resumed["data_log"] == ref_log["data_log"]
    torch.testing.assert_close(
        torch.tensor(resumed["losses"]), torch.tensor(ref_log["losses"]), rtol=1e-4, atol=1e-6
    )


def test_worker_death_is_survived_with_failure_config(
    reference, ray_local, known_modes_traces, tmp_path
):
    ref_log, _ = reference
    cfg = tiny(known_modes_traces, tmp_path, "restarted", "train.max_failures=1")
    # Step 9 (0-based) of 12 is mid-epoch 1 (6 steps per epoch); the last checkpoint holds 8
    # steps, so step 8, logged as step 9 before the crash, is trained again.
    (ray_local / "crash-train-step-9").write_text("")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        restarted = training_log(run(cfg))
    assert not (ray_local / "crash-train-step-9").exists()
    assert_every_batch_trained_once(restarted, cfg)
    assert restarted["data_log"] == ref_log["data_log"]
    # The replayed step is in MLflow's history once (the first attempt's value).
    client = MlflowClient(uri)
    [mlflow_run] = client.search_runs([client.get_experiment_by_name(cfg.experiment).experiment_id])
    steps = [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "loss")]
    assert steps == list(range(1, 13))


# FSDP: cost batches of 8 sequences make the ranks need different numbers of cost forwards in
# some chunks, so the padding forwards are exercised (without them the run hangs).
FSDP = ("train.num_workers=2", "train.parallelism=fsdp", "matching.cost_batch_size=8")
# FSDP pre-divides and reduce-scatters the gradients (a different float32 rounding from one
# worker's sum), and Adam's 1/sqrt(v) amplifies it: on CI's CPUs step 5 differs by 1.25e-4
# relative. Ranks out of sync, a wrong shard or a wrong matching shift the loss by percents.
FSDP_RTOL = 1e-3


def test_two_fsdp_workers_match_one_worker(reference, known_modes_traces, tmp_path):
    ref_log, ref_dir = reference
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        final_dir = run(tiny(known_modes_traces, tmp_path, "fsdp", *FSDP))
    two = training_log(final_dir)
    assert two["data_log"] == ref_log["data_log"] and two["steps"] == 12
    torch.testing.assert_close(
        torch.tensor(two["losses"]), torch.tensor(ref_log["losses"]), rtol=FSDP_RTOL, atol=1e-6
    )
    # The final model is gathered from the shards: the 1-worker model's tensors, up to the
    # rounding above. Adam's first steps move every weight by about +-lr whatever the size
    # of its gradient, so a weight whose gradient is near 0 can step the other way: a few
    # elements differ by 2-4 lr, each tensor by ~1% of its norm. A gather that misplaces or
    # drops shards is off by ~100%.
    weights = load_file(final_dir / "model.safetensors")
    ref_weights = load_file(ref_dir / "train" / "reference" / "final_model" / "model.safetensors")
    assert set(weights) == set(ref_weights)
    for name, value in ref_weights.items():
        assert weights[name].shape == value.shape, name
        assert float((weights[name] - value).norm() / value.norm()) < 0.05, name


def test_killed_fsdp_run_resumes_under_the_same_name(
    reference, ray_local, known_modes_traces, tmp_path
):
    ref_log, _ = reference
    cfg = tiny(known_modes_traces, tmp_path, "killed-fsdp", *FSDP)
    (ray_local / "crash-train-step-6").write_text("")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        with pytest.raises(TrainingFailedError):
            run(cfg)  # rank 0 dies at step 6, rank 1 is left inside a collective
        assert not (ray_local / "crash-train-step-6").exists()
        tripwire = ray_local / "crash-train-step-2"  # a restart from scratch would die here
        tripwire.write_text("")
        try:
            resumed = training_log(run(cfg))  # gathered step-4 checkpoint, loaded into shards
            assert tripwire.exists()
        finally:
            tripwire.unlink(missing_ok=True)
    assert resumed["data_log"] == ref_log["data_log"]
    torch.testing.assert_close(
        torch.tensor(resumed["losses"]), torch.tensor(ref_log["losses"]), rtol=FSDP_RTOL, atol=1e-6
    )
