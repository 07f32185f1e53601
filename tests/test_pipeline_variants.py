"""The pipeline's variants and run names, without Ray (the pipeline itself: test_pipeline)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ssft.config import ConfigError, load_config
from workflows.pipeline import in_parallel, train_config, variant_configs

CONFIGS = Path(__file__).resolve().parents[1] / "workflows" / "configs"


def test_variants_default_to_one_per_method_and_apply_their_overrides(tmp_path):
    cfg = load_config("tests/configs/tiny_test.yaml", ["pipeline.methods=ssft,sft_mixed"])
    assert [(v.name, c.method) for v, c in variant_configs(cfg)] == [
        ("ssft", "ssft"), ("sft_mixed", "sft_mixed")
    ]  # fmt: skip
    spare = load_config(CONFIGS / "known_modes_spare_tags.yaml")
    by_name = {v.name: c for v, c in variant_configs(spare)}
    assert by_name["ssft-n6"].forking.num_tags == 6
    assert by_name["ssft-n6-fill"].matching.spare_tags == "fill"
    assert by_name["sft-mixed"].method == "sft_mixed"


def test_a_variant_with_a_bad_override_is_named_before_any_compute(tmp_path):
    config = tmp_path / "v.yaml"
    config.write_text("preset: tiny_test\npipeline:\n  variants:\n"
                      "    - {name: ok, overrides: 'method=ssft'}\n"
                      "    - {name: typo, overrides: 'forking.num_tag=6'}\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"pipeline\.variants\[1\] \('typo'\).*num_tags"):
        variant_configs(load_config(config))
    config.write_text("preset: tiny_test\npipeline:\n  variants:\n"
                      "    - {name: a, overrides: 'method=ssft'}\n"
                      "    - {name: a, overrides: 'method=random'}\n")  # fmt: skip
    with pytest.raises(ConfigError, match="names must be unique"):
        load_config(config)


def _by_name(config: str) -> dict:
    return {v.name: c for v, c in variant_configs(load_config(CONFIGS / config))}


def test_shared_variants_of_two_configs_get_the_same_run_name(tmp_path):
    """So the spare-tag comparison reuses the experiment's finished runs."""
    main = _by_name("known_modes_experiment.yaml")
    spare = _by_name("known_modes_spare_tags.yaml")
    traces = tmp_path / "t.parquet"
    for name in ("ssft-n4", "sft-mixed", "random"):
        a = train_config(main[name], name, 0, traces, "sha256:x")
        b = train_config(spare[name], name, 0, traces, "sha256:x")
        assert a.name == b.name and a.name.startswith(f"known-modes-{name}-s0-")
    n6 = train_config(spare["ssft-n6"], "ssft-n6", 0, traces, "sha256:x")
    fill = train_config(spare["ssft-n6-fill"], "ssft-n6-fill", 0, traces, "sha256:x")
    n4 = train_config(main["ssft-n4"], "ssft-n4", 0, traces, "sha256:x")
    assert len({n6.name, fill.name, n4.name}) == 3
    # What decides the result decides the name: another seed or data digest, another run.
    assert train_config(main["ssft-n4"], "ssft-n4", 1, traces, "sha256:x").name != n4.name
    assert train_config(main["ssft-n4"], "ssft-n4", 0, traces, "sha256:y").name != n4.name


def test_in_parallel_runs_jobs_at_once_up_to_the_limit_and_raises_after_all_finish():
    running, most, finished = [0], [0], []
    lock = threading.Lock()

    def job(i: int, fail: bool = False):
        def run():
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1
                finished.append(i)
            if fail:
                raise ValueError(f"job {i} failed")
            return i

        return run

    assert in_parallel([job(i) for i in range(5)], 2) == [0, 1, 2, 3, 4] and most[0] == 2
    finished.clear()
    with pytest.raises(ValueError, match="job 1 failed"):
        in_parallel([job(0), job(1, fail=True), job(2)], 3)
    assert sorted(finished) == [0, 1, 2]  # the others ran to their end
