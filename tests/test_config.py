"""The typed config: defaults, layering, strict keys and types, cross-field rules, CLI."""

import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from ssft.config import (
    BuildConfig,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    MatchingConfig,
    ModelConfig,
    TeacherConfig,
    TrainConfig,
    config_from_dict,
    config_help,
    config_to_dict,
    config_to_yaml,
    flatten_config,
    load_config,
    parse_cli,
)
from ssft.config.checks import field_types
from ssft.config.presets import PRESETS, base, get_preset, tiny_cpu, tiny_test
from ssft.data import known_modes

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "tests" / "configs" / "tiny_test.yaml"


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def tiny(*overrides: str) -> ExperimentConfig:
    return load_config(TINY_YAML, overrides)


# --- defaults and presets -------------------------------------------------------------------


def test_defaults_are_valid_and_match_the_documented_values():
    cfg = ExperimentConfig()
    assert (cfg.name, cfg.method, cfg.seed) == ("ssft", "ssft", 0)
    assert cfg.model.init == "pretrained" and cfg.model.name_or_path is None
    assert cfg.data.max_seq_len == 1024 and cfg.data.overlong == "drop"
    assert cfg.forking.num_tags == 6 and cfg.forking.tag_format == "<think{i}>"
    assert cfg.matching.cost == "mean_nll" and cfg.matching.prefix_tokens is None
    assert cfg.train.lr == 1e-5 and cfg.train.lr_schedule == "cosine"
    for section in (ModelConfig, DataConfig, MatchingConfig, TrainConfig):
        section().validate()
    # Complete once a model is named.
    cfg.model.name_or_path = "some/model"
    assert cfg.validate() is cfg


def test_bare_defaults_name_no_model_so_full_validation_asks_for_one():
    msg = error(ExperimentConfig().validate)
    assert "model.name_or_path=null" in msg and "model.init='pretrained'" in msg
    assert "model.init=random model.tokenizer=char" in msg


def test_presets_derive_and_tiny_test_has_the_promised_values():
    assert base() == ExperimentConfig()
    cfg = tiny_test()
    assert cfg.name == "tiny-cpu"
    assert (cfg.model.init, cfg.model.tokenizer) == ("random", "char")
    m = cfg.model
    assert (m.hidden_size, m.num_layers, m.num_heads, m.intermediate_size) == (64, 2, 4, 128)
    assert m.max_position_embeddings == 512 and cfg.data.max_seq_len == 256
    assert cfg.forking.num_tags == 4
    assert cfg.train.lr == 3e-3 and cfg.train.questions_per_step == 32
    # No held-out questions: a test training does not pay for a validation sampling pass.
    assert cfg.tag_selection.validation_questions == 0
    assert set(PRESETS) == {"base", "tiny_test", "tiny_cpu", "known_modes_experiment",
                            "known_modes_hard", "known_modes_gpu", "champ_traces",
                            "hf_teachers", "smollm2_known_modes", "qwen_champ_gpu"}  # fmt: skip
    assert get_preset("tiny_test") is tiny_test
    # Every preset builds and validates; the main job's picks its Pass@1 tag on held-out data.
    assert all(p().validate() for name, p in PRESETS.items() if name != "base")
    assert tiny_cpu().tag_selection.pass1_rule == "validation"


def test_unknown_preset_lists_valid_names(tmp_path):
    assert "base, tiny_test, tiny_cpu" in error(get_preset, "tiny")
    msg = error(load_config, write(tmp_path, "preset: tiny\n"))
    assert "preset='tiny'" in msg and "tiny_cpu" in msg


def test_shipped_yaml_loads_to_its_preset():
    assert load_config(TINY_YAML) == tiny_test()
    assert load_config(REPO / "workflows" / "configs" / "tiny_cpu.yaml") == tiny_cpu()
    # Every shipped file that only names a preset is that preset, exactly.
    for path in sorted((REPO / "workflows" / "configs").glob("*.yaml")):
        lines = [x for x in path.read_text().splitlines() if x and not x.startswith("#")]
        if len(lines) == 1 and lines[0].startswith("preset: "):
            assert load_config(path) == get_preset(lines[0].split(": ")[1])(), path.name


def test_the_pretrained_student_presets_compare_ssft_with_sft_mixed_on_held_out_questions():
    from ssft.config import EvalConfig
    from ssft.data.question_sources import held_out_questions
    from workflows.pipeline import variant_configs

    for name, model_dir in (("smollm2_known_modes", "models/smollm2-135m-instruct"),
                            ("qwen_champ_gpu", "models/qwen2.5-coder-1.5b-instruct")):  # fmt: skip
        cfg = get_preset(name)()
        assert (cfg.model.init, cfg.model.name_or_path) == ("pretrained", model_dir)
        assert cfg.data.use_chat_template and cfg.eval.split == "test"
        assert cfg.train.max_steps is not None  # the budget is stated, not implied by the data
        methods = [variant.method for _, variant in variant_configs(cfg)]
        assert methods == ["ssft", "sft_mixed"] and cfg.forking.num_tags == 4
        assert cfg.forking.num_tags >= cfg.build.max_traces_per_question
        # A held-out split exists for the source (the pipeline refuses one that has none).
        questions, _ = held_out_questions(cfg.build, EvalConfig(num_questions=4))
        assert len(questions) == 4
    gpu = get_preset("qwen_champ_gpu")()
    assert gpu.train.use_gpu and gpu.eval.gpus_per_task == 1.0
    assert gpu.eval.answer_extraction == gpu.build.teachers[0].answer_extraction


# --- layering ---------------------------------------------------------------------------------


def test_layering_preset_then_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "preset: tiny_test\ntrain:\n  lr: 0.01\n  epochs: 3\nname: from-yaml\n")
    cfg = load_config(path, ["train.lr=0.02", "method=sft_mixed"])
    assert cfg.train.lr == 0.02  # override beats YAML
    assert cfg.train.epochs == 3  # YAML beats preset
    assert cfg.name == "from-yaml"
    assert cfg.method == "sft_mixed"
    assert cfg.model.tokenizer == "char" and cfg.forking.num_tags == 4  # preset kept
    # A key given twice is an error (as in YAML): the last would silently win.
    msg = error(load_config, path, ["train.lr=0.5", "train.lr=0.25"])
    assert "override 'train.lr=...' is given twice (overrides 1 and 2)" in msg
    msg = error(load_config, path, ["build.teachers[0].error_rate=0.1",
                                    "build.teachers.0.error_rate=0.2"])  # fmt: skip
    assert "'build.teachers.0.error_rate=...' is given twice" in msg


def test_yaml_without_preset_starts_from_the_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  name_or_path: org/model\n"))
    assert cfg.model.name_or_path == "org/model" and cfg.forking.num_tags == 6


def test_no_file_only_overrides():
    cfg = load_config(None, ["model.name_or_path=org/m", "forking.num_tags=3"])
    assert cfg.model.name_or_path == "org/m" and cfg.forking.num_tags == 3


def test_empty_yaml_file_is_the_preset(tmp_path):
    path = write(tmp_path, "# nothing\n")
    assert load_config(path, ["model.name_or_path=m"]) == load_config(
        None, ["model.name_or_path=m"]
    )


# --- unknown keys -----------------------------------------------------------------------------


def test_unknown_key_in_yaml_names_path_file_and_suggestion(tmp_path):
    msg = error(load_config, write(tmp_path, "preset: tiny_test\ntrain:\n  lrr: 0.1\n", "x.yaml"))
    assert "'train.lrr'" in msg and "x.yaml" in msg and "'train.lr'" in msg
    msg = error(load_config, write(tmp_path, "preset: tiny_test\nmodle:\n  init: random\n"))
    assert "'modle'" in msg and "'model'" in msg


def test_unknown_key_in_override_names_it_and_suggests():
    msg = error(tiny, "train.lrr=0.1")
    assert "'train.lrr'" in msg and "override 'train.lrr=0.1'" in msg and "'train.lr'" in msg
    assert "'train.lr'" in error(tiny, "model.lr=0.1")  # right field, wrong section
    assert "'train.lr'" in error(tiny, "lr=0.1")
    assert "'model.init'" in error(tiny, "modle.init=random")
    msg = error(tiny, "train.foo=1")  # nothing close: list the section's keys
    assert "train.epochs" in msg and "train.log_every" in msg


def test_config_from_dict_is_strict():
    msg = error(config_from_dict, {"train": {"lr": 0.1, "bogus": 1}})
    assert "'train.bogus'" in msg
    msg = error(config_from_dict, {"train": 5})
    assert "train=5" in msg and "section" in msg
    assert "'preset'" in error(config_from_dict, {"preset": "tiny_test"})


def test_malformed_and_misplaced_overrides():
    msg = error(tiny, "train.lr")
    assert "'train.lr'" in msg and "key=value" in msg and "train.lr=3e-4" in msg
    assert "section" in error(tiny, "train=3")
    assert "preset:" in error(tiny, "preset=base")
    assert "not a valid YAML value" in error(tiny, "train.lr=[1")


def test_config_file_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"preset: tiny_test\nname: caf\xe9\n")
    msg = error(load_config, path)
    assert "latin.yaml" in msg and "line 2" in msg and "not valid UTF-8" in msg


def test_key_written_twice_in_yaml_is_an_error(tmp_path):
    """PyYAML would keep the last one silently; a pasted duplicate must not change a run."""
    text = "preset: tiny_test\ntrain:\n  lr: 0.1\n  epochs: 2\n  lr: 0.5\n"
    msg = error(load_config, write(tmp_path, text, "dup.yaml"))
    assert "dup.yaml" in msg and "key 'lr' repeats line 3" in msg and "line 5" in msg
    text = "preset: tiny_test\nbase: &b {lr: 0.1, epochs: 2}\n"
    assert "'base'" in error(load_config, write(tmp_path, text))  # still an unknown key
    merged = "preset: tiny_test\ntrain:\n  <<: {lr: 0.1, epochs: 2}\n  lr: 0.5\n"
    assert load_config(write(tmp_path, merged)).train.lr == 0.5  # a merge may be overridden


def test_unreadable_config_path_is_a_config_error(tmp_path):
    msg = error(load_config, tmp_path)  # a directory
    assert str(tmp_path) in msg and "cannot be read" in msg


def test_value_rule_errors_name_the_config_file(tmp_path):
    msg = error(load_config, write(tmp_path, "preset: tiny_test\nforking:\n  num_tags: 0\n"))
    assert "forking.num_tags=0" in msg and "run.yaml" in msg


# --- types and choices ------------------------------------------------------------------------


def test_type_errors_name_field_and_expected_type(tmp_path):
    msg = error(tiny, "train.epochs=abc")
    assert "train.epochs='abc'" in msg and "expected an integer" in msg and "got str" in msg
    msg = error(load_config, write(tmp_path, "preset: tiny_test\ntrain:\n  epochs: abc\n"))
    assert "train.epochs='abc'" in msg
    assert "expected an integer" in error(tiny, "train.epochs=1.5")
    assert "expected an integer" in error(tiny, "train.epochs=true")  # bools are not ints
    msg = error(tiny, "model.trust_remote_code=1")  # nor ints bools
    assert "model.trust_remote_code=1" in msg and "expected true or false" in msg
    msg = error(load_config, write(tmp_path, "preset: tiny_test\nname: 7\n"))
    assert "name=7" in msg and "expected a string" in msg and "Quote" in msg
    with pytest.raises(ConfigError, match=r"train.lr='fast'.*expected a number"):
        TrainConfig(lr="fast")


def test_float_fields_accept_ints_and_yaml_exponent_strings(tmp_path):
    text = "preset: tiny_test\ntrain:\n  lr: 1e-4\n  max_grad_norm: 2\n"
    cfg = load_config(write(tmp_path, text))
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)  # PyYAML: "1e-4" is a str
    assert cfg.train.max_grad_norm == 2.0 and isinstance(cfg.train.max_grad_norm, float)
    assert tiny("train.lr=2e-3").train.lr == 2e-3


def test_literal_errors_list_the_choices():
    msg = error(tiny, "method=foo")
    assert "method='foo'" in msg
    assert all(c in msg for c in ("'ssft'", "'sft_mixed'", "'random'", "'single'"))
    assert "Did you mean model.dtype=bfloat16" in error(tiny, "model.dtype=bf16")
    assert "'keep_most_distinct'" in error(tiny, "data.too_many_traces=drop")


def test_optional_null_override_and_raw_strings():
    cfg = tiny("matching.prefix_tokens=64", "data.end_of_turn_token=<|end|>")
    assert cfg.matching.prefix_tokens == 64 and cfg.data.end_of_turn_token == "<|end|>"
    assert tiny("matching.prefix_tokens=null").matching.prefix_tokens is None
    assert tiny("data.end_of_turn_token=None").data.end_of_turn_token is None
    assert tiny("name=007").name == "007"  # str fields keep the raw text, not the int 7
    assert tiny("name=true").name == "true"
    assert tiny("data.prompt_template=Q: {prompt} A:").data.prompt_template == "Q: {prompt} A:"


# --- per-field rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "matching.prefix_tokens=0",
            "matching.prefix_tokens=0: must be a positive number of "
            "tokens or null (score the whole trace). Set matching.prefix_tokens=256, or remove it.",
        ),
        ("data.max_traces_per_question=0", "data.max_traces_per_question=0: must be a positive"),
        ("train.epochs=0", "train.epochs=0: must be a positive integer"),
        ("train.micro_batch_sequences=-2", "train.micro_batch_sequences=-2"),
        ("forking.num_tags=0", "forking.num_tags=0"),
        ("train.lr=0", "train.lr=0.0: must be a finite number > 0"),
        ("train.lr=-1e-3", "train.lr=-0.001"),
        ("train.lr=.nan", "train.lr=nan"),
        ("train.warmup_steps=-1", "train.warmup_steps=-1: must be >= 0"),
        ("train.max_grad_norm=-1", "train.max_grad_norm=-1.0"),
        ("forking.init_noise=-0.1", "forking.init_noise=-0.1"),
        ("seed=-1", "seed=-1: must be in [0, 2**32)"),
        ("name=", "name='': must not be empty"),
        ("model.tokenizer=", "model.tokenizer=''"),
        ("forking.tag_format=<t>", "forking.tag_format='<t>': must contain {i}"),
        ("data.prompt_template=Q:", "data.prompt_template='Q:': must contain {prompt}"),
        ("data.prompt_template={prompt} {x}", "is not a valid str.format template"),
        ("model.hidden_size=63", "model.hidden_size=63: must be model.num_heads=4 times"),
    ],
)
def test_field_rules(override, expected):
    assert expected in error(tiny, override)


# --- cross-field rules ------------------------------------------------------------------------


def test_pretrained_needs_a_model_path():
    msg = error(load_config, None, ["model.init=pretrained"])
    assert "model.name_or_path=null" in msg and "Set model.name_or_path" in msg


def test_char_tokenizer_only_with_random_init():
    msg = error(tiny, "model.init=pretrained", "model.name_or_path=org/m")
    assert "model.tokenizer='char'" in msg and "model.init='pretrained'" in msg
    assert "model.tokenizer=null" in msg


def test_random_init_needs_a_tokenizer():
    msg = error(tiny, "model.tokenizer=null")
    assert "model.tokenizer=null with model.init='random'" in msg
    assert "model.tokenizer=char" in msg


def test_random_model_must_cover_max_seq_len():
    msg = error(tiny, "data.max_seq_len=1024")
    assert "model.max_position_embeddings=512" in msg and "data.max_seq_len=1024" in msg


@pytest.mark.parametrize("method", ["ssft", "random"])
def test_more_traces_than_tags_is_an_error_for_injective_methods(method):
    msg = error(
        load_config,
        None,
        ["model.name_or_path=m", f"method={method}", "data.max_traces_per_question=7"],
    )
    assert msg == (
        f"data.max_traces_per_question=7 but forking.num_tags=6: method '{method}' gives each "
        "trace a distinct tag. Raise forking.num_tags to 7, lower data.max_traces_per_question, "
        "or set data.too_many_traces=keep_most_distinct."
    )


def test_more_traces_than_tags_is_fine_otherwise():
    assert tiny("data.max_traces_per_question=7", "method=sft_mixed").method == "sft_mixed"
    assert tiny("data.max_traces_per_question=7", "method=single").method == "single"
    cfg = tiny("data.max_traces_per_question=7", "data.too_many_traces=keep_most_distinct")
    assert cfg.data.max_traces_per_question == 7
    assert tiny("data.max_traces_per_question=4").data.max_traces_per_question == 4  # M == N


def test_forking_token_equal_to_shared_tag_is_an_error():
    msg = error(tiny, "forking.shared_tag=<think3>")
    assert "forking.tag_format='<think{i}>'" in msg and "'<think3>'" in msg and "i=3" in msg
    assert "forking.shared_tag" in msg
    assert tiny("forking.shared_tag=<think5>").forking.shared_tag == "<think5>"  # only N=4 tags


def test_validate_rechecks_fields_assigned_after_construction():
    cfg = tiny_test()
    cfg.train.epochs = "2"
    assert "train.epochs='2'" in error(cfg.validate)
    cfg = tiny_test()
    cfg.forking.num_tags = 2
    cfg.data.max_traces_per_question = 3
    assert "forking.num_tags=2" in error(cfg.validate)


# --- serialisation ----------------------------------------------------------------------------


def test_yaml_round_trip(tmp_path):
    cfg = tiny("name=007", "train.lr=1e-4", "matching.prefix_tokens=32", "method=random")
    cfg.data.prompt_template = "Q: {prompt}\n{{not a field}}\nA: "
    cfg = cfg.validate()
    assert load_config(write(tmp_path, config_to_yaml(cfg))) == cfg


def test_dict_round_trip_and_dict_is_plain():
    cfg = tiny("seed=3", "forking.tag_loss=true")
    d = config_to_dict(cfg)
    assert d["train"]["lr"] == 3e-3 and d["forking"]["tag_loss"] is True
    assert config_from_dict(d) == cfg
    assert config_from_dict({"model": {"name_or_path": "m"}}).model.name_or_path == "m"


def test_flatten_has_one_dotted_key_per_field():
    flat = flatten_config(tiny_test())
    expected = {"name", "experiment", "method", "seed"} | {
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(ExperimentConfig)
        if dataclasses.is_dataclass(section.type)
        for f in dataclasses.fields(section.type)
        if f.name not in ("teachers", "variants")  # lists: one key per entry field
    }
    teacher_fields = [f.name for f in dataclasses.fields(TeacherConfig)]
    expected |= {f"build.teachers.{i}.{f}" for i in range(4) for f in teacher_fields}
    # 4 tag_selection fields, matching.spare_tags, eval.greedy, pipeline.max_concurrent;
    # build.min_coverage, eval.answer_extraction, .questions_path, .mode_classifier,
    # train.max_steps; sweep.evaluate, .rank_by; per teacher answer_extraction, replay_source;
    # the gfpo section (20), pipeline.gfpo, eval.self_selected, eval.mask_forking_tokens,
    # pipeline.require_pass1_above
    assert set(flat) == expected
    assert len(flat) == 53 + 13 + 14 + 3 + 7 + 7 + 5 + 2 + 4 * 21 + 20 + 4
    assert flat["train.lr"] == 3e-3 and flat["model.tokenizer"] == "char"
    assert flat["matching.prefix_tokens"] is None
    assert all(v is None or isinstance(v, str | int | float | bool) for v in flat.values())


# --- build stage: the list of teachers -------------------------------------------------------

TEACHERS_YAML = """\
preset: tiny_test
build:
  num_questions: 16
  teachers:
    - name: smollm2
      kind: hf
      model: HuggingFaceTB/SmolLM2-135M-Instruct
      temperature: 1.0
    - name: served
      kind: openai
      base_url: http://127.0.0.1:8000/v1
      model: qwen
      api_key_env: OPENAI_API_KEY
    - {name: "strategy:round", kind: strategy, strategy: round, error_rate: 0.2}
"""


def test_default_teachers_are_the_four_strategy_solvers():
    build = ExperimentConfig().build
    assert [t.name for t in build.teachers] == [
        "strategy:column",
        "strategy:split",
        "strategy:round",
        "strategy:count_on",
    ]
    for t, strategy in zip(build.teachers, known_modes.STRATEGIES, strict=True):
        assert (t.kind, t.strategy, t.samples_per_question, t.error_rate) == (
            "strategy",
            strategy,
            1,
            0.1,
        )
    assert BuildConfig().validate() == build
    assert BuildConfig().teachers is not BuildConfig().teachers  # no shared mutable default
    assert tiny_test().build == dataclasses.replace(build, num_questions=256)


def test_build_copies_of_known_modes_constants_are_in_sync():
    from ssft.config import stages as config_stages

    assert config_stages.STRATEGIES == known_modes.STRATEGIES
    assert config_stages.KNOWN_MODES_DIGITS == (known_modes.MIN_DIGITS, known_modes.MAX_DIGITS)


def test_yaml_list_of_teachers_replaces_the_default_list(tmp_path):
    cfg = load_config(write(tmp_path, TEACHERS_YAML))
    assert [t.name for t in cfg.build.teachers] == ["smollm2", "served", "strategy:round"]
    hf, served, rnd = cfg.build.teachers
    assert hf.kind == "hf" and hf.temperature == 1.0 and hf.samples_per_question == 4
    assert served.api_key_env == "OPENAI_API_KEY" and served.base_url.endswith("/v1")
    assert rnd.error_rate == 0.2 and rnd.samples_per_question == 4  # entry defaults, not preset's
    assert cfg.build.num_questions == 16


def test_unknown_teacher_key_names_the_index_and_suggests(tmp_path):
    text = TEACHERS_YAML.replace("      model: qwen\n", "      model: qwen\n      temprature: 1\n")
    msg = error(load_config, write(tmp_path, text, "t.yaml"))
    assert "'build.teachers[1].temprature'" in msg and "t.yaml" in msg
    assert "'build.teachers[1].temperature'" in msg


def test_malformed_teacher_lists(tmp_path):
    msg = error(config_from_dict, {"build": {"teachers": {"name": "x"}}})
    assert "build.teachers is a list" in msg
    msg = error(config_from_dict, {"build": {"teachers": ["strategy:column"]}})
    assert "build.teachers[0]='strategy:column'" in msg and "mapping" in msg
    msg = error(config_from_dict, {"build": {"teachers": [{"name": "a"}]}})
    assert "build.teachers[0].kind is missing" in msg
    msg = error(config_from_dict, {"build": {"teachers": []}})
    assert "build.teachers=[]: the build needs at least one teacher" in msg
    msg = error(BuildConfig, teachers=[{"name": "a", "kind": "hf"}])
    assert "build.teachers: expected a list of TeacherConfig, got a list holding dict" in msg


def test_duplicate_teacher_names():
    teachers = [{"name": "a", "kind": "strategy", "strategy": s} for s in ("round", "split")]
    msg = error(config_from_dict, {"build": {"teachers": teachers}})
    assert "build.teachers[1].name='a'" in msg and "build.teachers[0]" in msg
    assert "unique" in msg


@pytest.mark.parametrize(
    ("teacher", "expected"),
    [
        ({"kind": "hf"}, "build.teachers[1].model=null: a teacher of kind 'hf' needs it"),
        ({"kind": "vllm"}, "build.teachers[1].model=null: a teacher of kind 'vllm' needs it"),
        ({"kind": "openai", "model": "m"}, "build.teachers[1].base_url=null: a teacher of kind"),
        ({"kind": "openai", "base_url": "http://h/v1"}, "build.teachers[1].model=null"),
        ({"kind": "openai", "model": "m", "base_url": "h:8000"}, "must start with http://"),
        ({"kind": "replay"}, "build.teachers[1].replay_path=null: a teacher of kind 'replay'"),
        ({"kind": "strategy"}, "build.teachers[1].strategy=null: a teacher of kind 'strategy'"),
        ({"kind": "strategy", "strategy": "carry"}, "build.teachers[1].strategy='carry': must"),
        ({"kind": "mystery"}, "build.teachers[1].kind='mystery': must be one of 'hf'"),
        ({"kind": "hf", "model": ""}, "build.teachers[1].model='': must not be empty"),
    ],
)
def test_per_kind_required_fields(teacher, expected):
    teachers = [
        {"name": "ok", "kind": "replay", "replay_path": "r.jsonl"},
        {"name": "t", **teacher},
    ]
    assert expected in error(config_from_dict, {"build": {"teachers": teachers}})


def test_each_kind_validates_with_its_required_fields():
    teachers = [
        TeacherConfig(name="a", kind="hf", model="m"),
        TeacherConfig(name="b", kind="vllm", model="m"),
        TeacherConfig(name="c", kind="openai", model="m", base_url="https://api.example/v1"),
        TeacherConfig(name="d", kind="replay", replay_path="traces.parquet"),
        TeacherConfig(name="e", kind="strategy", strategy="count_on"),
    ]
    assert [t.name for t in BuildConfig(teachers=teachers).teachers] == list("abcde")
    # Standalone, an entry's messages name it build.teachers[i].
    assert "build.teachers[i].model=null" in error(TeacherConfig, name="x", kind="hf")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("build.teachers.0.error_rate=1.5", "build.teachers[0].error_rate=1.5: must be in [0, 1]"),
        ("build.teachers.1.error_rate=-0.1", "build.teachers[1].error_rate=-0.1"),
        ("build.teachers.0.temperature=0", "build.teachers[0].temperature=0.0: must be > 0"),
        ("build.teachers.0.top_p=0", "build.teachers[0].top_p=0.0: must be in (0, 1]"),
        ("build.teachers.0.top_p=1.5", "build.teachers[0].top_p=1.5"),
        ("build.teachers.2.samples_per_question=0", "build.teachers[2].samples_per_question=0"),
        ("build.teachers.0.max_new_tokens=0", "build.teachers[0].max_new_tokens=0: must be a"),
        ("build.teachers.0.batch_size=-1", "build.teachers[0].batch_size=-1"),
        ("build.teachers.0.max_retries=-1", "build.teachers[0].max_retries=-1: must be >= 0"),
        ("build.teachers.0.request_timeout_s=0", "build.teachers[0].request_timeout_s=0.0"),
        ("build.teachers.3.name=7", "build.teachers[3].name='7': must not be a bare number"),
        ("build.teachers.0.dtype=bf16", "Did you mean build.teachers[0].dtype=bfloat16"),
        ("build.near_duplicate_threshold=0", "build.near_duplicate_threshold=0.0: must be in (0"),
        ("build.near_duplicate_threshold=1.01", "build.near_duplicate_threshold=1.01"),
        ("build.questions=jsonl", "build.questions_path=null: build.questions='jsonl' needs it"),
        ("build.num_questions=null", "build.num_questions=null: build.questions='known_modes'"),
        ("build.num_questions=0", "build.num_questions=0: must be a positive integer or null"),
        ("build.questions_per_shard=0", "build.questions_per_shard=0"),
        ("build.max_traces_per_question=0", "build.max_traces_per_question=0"),
        ("build.digits=1", "build.digits=1: must be in [2, 6]"),
    ],
)
def test_build_field_rules(override, expected):
    assert expected in error(tiny, override)


def test_build_boundaries_that_are_allowed():
    cfg = tiny(
        "build.near_duplicate_threshold=1.0",
        "build.teachers.0.error_rate=0",
        "build.teachers.1.error_rate=1",
        "build.teachers.0.top_p=1",
        "build.teachers.0.max_retries=0",
        "build.max_task_retries=0",
        "build.questions=jsonl",
        "build.questions_path=q.jsonl",
        "build.num_questions=null",
    )
    assert cfg.build.num_questions is None and cfg.build.teachers[1].error_rate == 1.0


@pytest.mark.parametrize(
    "secret",
    ["sk-proj-abcdef0123456789abcdef", "x" * 65, "my key", "Bearer abc.def"],
)
def test_api_key_env_value_that_is_not_a_name_errors_without_echoing_it(tmp_path, secret):
    key_like = secret.startswith("sk-") or len(secret) > 64
    for msg in (
        error(tiny, f"build.teachers.0.api_key_env={secret}"),
        error(tiny, f"build.teachers.strategy:split.api_key_env={secret}"),
        error(load_config, write(tmp_path, TEACHERS_YAML.replace("OPENAI_API_KEY", secret))),
    ):
        assert secret not in msg and "api_key_env=<hidden" in msg
        assert "Put the key in the environment" in msg and "api_key_env=OPENAI_API_KEY" in msg
        assert ("looks like an API key" in msg) is key_like
    assert tiny("build.teachers.0.api_key_env=_MY_KEY2").build.teachers[0].api_key_env == "_MY_KEY2"


def test_unknown_teacher_field_in_override_does_not_echo_the_value():
    msg = error(tiny, "build.teachers.0.api_key=sk-secret-value")
    assert "sk-secret" not in msg
    assert "'build.teachers[0].api_key'" in msg and "'build.teachers[0].api_key_env'" in msg


def test_overrides_address_a_teacher_by_index_or_by_name():
    cfg = tiny(
        "build.teachers.0.temperature=1.0",
        "build.teachers[1].top_p=0.5",
        "build.teachers.strategy:round.error_rate=0.2",
        "build.teachers[strategy:count_on].samples_per_question=3",
        "build.teachers.3.system_prompt=null",
    )
    column, split, rnd, count_on = cfg.build.teachers
    assert column.temperature == 1.0 and split.top_p == 0.5 and rnd.error_rate == 0.2
    assert count_on.samples_per_question == 3 and count_on.system_prompt is None
    # A renamed teacher is found by its new name; names with dots work too.
    cfg = tiny("build.teachers.0.name=qwen2.5", "build.teachers.qwen2.5.error_rate=0")
    assert cfg.build.teachers[0].error_rate == 0.0
    assert cfg.build.teachers[1:] == tiny_test().build.teachers[1:]


def test_override_by_name_in_a_yaml_list(tmp_path):
    cfg = load_config(write(tmp_path, TEACHERS_YAML), ["build.teachers.served.max_retries=5"])
    assert cfg.build.teachers[1].max_retries == 5


def test_bad_teacher_overrides():
    msg = error(tiny, "build.teachers.strategy:carry.error_rate=0.2")
    assert "no entry of build.teachers is named 'strategy:carry'" in msg
    assert "[0] 'strategy:column'" in msg and "[3] 'strategy:count_on'" in msg
    msg = error(tiny, "build.teachers.7.error_rate=0.2")
    assert "build.teachers has no entry 7; it has 4" in msg and "'strategy:round'" in msg
    msg = error(tiny, "build.teachers.0.temprature=1.0")
    assert "'build.teachers[0].temprature'" in msg and "'build.teachers[0].temperature'" in msg
    assert "is a list" in error(tiny, "build.teachers=[]")
    assert "set one field of one entry" in error(tiny, "build.teachers.0=x")
    assert "expected a number" in error(tiny, "build.teachers.0.temperature=hot")
    # A teacher's field addressed without the list is suggested with it.
    assert "'build.teachers[i].error_rate'" in error(tiny, "error_rate=0.2")


def test_round_trip_with_teacher_lists(tmp_path):
    cfg = load_config(write(tmp_path, TEACHERS_YAML), ["build.teachers.0.system_prompt=null"])
    assert load_config(write(tmp_path, config_to_yaml(cfg), "out.yaml")) == cfg
    d = config_to_dict(cfg)
    assert d["build"]["teachers"][1]["api_key_env"] == "OPENAI_API_KEY"
    assert isinstance(d["build"]["teachers"][0], dict) and config_from_dict(d) == cfg
    # The dict is a copy: editing it leaves the config alone.
    d["build"]["teachers"][0]["temperature"] = 0.1
    assert cfg.build.teachers[0].temperature == 1.0


def test_flatten_numbers_the_teachers(tmp_path):
    flat = flatten_config(load_config(write(tmp_path, TEACHERS_YAML)))
    assert flat["build.teachers.0.name"] == "smollm2" and flat["build.teachers.2.error_rate"] == 0.2
    assert flat["build.teachers.1.api_key_env"] == "OPENAI_API_KEY"
    assert "build.teachers.3.name" not in flat and "build.teachers" not in flat
    assert flat["build.num_questions"] == 16


def test_validate_rechecks_teachers_assigned_by_hand():
    cfg = tiny_test()
    cfg.build.teachers[2].error_rate = 2.0
    assert "build.teachers[2].error_rate=2.0" in error(cfg.validate)
    cfg = tiny_test()
    cfg.build.teachers.append(
        TeacherConfig(name="strategy:split", kind="strategy", strategy="split")
    )
    assert "build.teachers[4].name='strategy:split'" in error(cfg.validate)


# --- command line -----------------------------------------------------------------------------


def test_parse_cli_config_and_overrides():
    cfg = parse_cli(["--config", str(TINY_YAML), "train.lr=0.5", "forking.num_tags=5"])
    assert cfg.train.lr == 0.5 and cfg.forking.num_tags == 5 and cfg.name == "tiny-cpu"
    assert parse_cli([f"--config={TINY_YAML}"]) == tiny_test()
    assert parse_cli(["model.name_or_path=org/m"]).model.name_or_path == "org/m"


def test_parse_cli_rejects_unknown_options():
    msg = error(parse_cli, ["--config", str(TINY_YAML), "--lr", "3"])
    assert "'--lr'" in msg and "key=value" in msg


def test_help_exits_zero_and_lists_every_field(capsys):
    for flag in ("--help", "-h"):
        with pytest.raises(SystemExit) as info:
            parse_cli([flag])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "--config" in out
        for key in flatten_config(tiny_test()):
            key = re.sub(r"^build\.teachers\.\d+\.", "build.teachers[i].", key)
            assert f"  {key}: " in out, key
        assert out.count("  build.teachers[i].temperature: float = 0.7\n") == 1
    text = config_help()
    assert "matching.prefix_tokens: int | null = null" in text
    assert "method: {ssft|sft_mixed|random|single|gfpo} = 'ssft'" in text


def test_config_module_imports_no_heavy_dependencies():
    code = (
        "import sys, ssft.config, ssft.config.presets\n"
        "heavy = ('torch', 'transformers', 'ray', 'math_verify')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# The package's layers, bottom first: each module imports only those before it.
LAYERS = ["checks", "stages", "schema", "presets", "loading", "__init__"]


def test_the_config_modules_import_one_way_and_presets_alone_imports():
    import ast

    package = REPO / "ssft" / "config"
    assert sorted(p.stem for p in package.glob("*.py")) == sorted(LAYERS)
    for i, module in enumerate(LAYERS):
        tree = ast.parse((package / f"{module}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        inside = {m.removeprefix("ssft.config").lstrip(".") for m in imported if m and
                  m.startswith("ssft.config")}  # fmt: skip
        assert "" not in inside, f"{module} imports the package ssft.config (a cycle)"
        assert inside <= set(LAYERS[:i]), f"{module} imports {inside - set(LAYERS[:i])}"
    for module in ("ssft.config.presets", "ssft.config.stages", "ssft.config.loading"):
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=REPO)


# --- lists of values --------------------------------------------------------------------------

# (key, YAML value, command-line value, the config's value): one per list field, or more.
LIST_CASES = [
    ("pipeline.methods", "[ssft, sft_mixed]", "ssft,sft_mixed", ("ssft", "sft_mixed")),
    ("pipeline.seeds", "[0, 1, 2]", "0,1,2", (0, 1, 2)),
    ("pipeline.seeds", "[3]", "3", (3,)),
    ("sweep.num_tags", "[2, 4]", "2, 4", (2, 4)),
    ("sweep.costs", "[sum_nll]", "sum_nll", ("sum_nll",)),
    ("sweep.prefixes", "[none, 16]", "none,16", (None, 16)),
    ("sweep.prefixes", "[null, 8]", "None,8", (None, 8)),
    ("sweep.baselines", "[random]", "random", ("random",)),
    ("sweep.baselines", "[]", "", ()),
]


def _list_fields() -> set[str]:
    return {
        f"{section}.{name}"
        for section, cls in field_types(ExperimentConfig).items()
        if dataclasses.is_dataclass(cls)
        for name, tp in field_types(cls).items()
        if typing.get_origin(tp) is tuple
    }


def test_every_list_field_is_covered_below():
    assert _list_fields() == {key for key, *_ in LIST_CASES}


@pytest.mark.parametrize(("key", "yaml_value", "cli_value", "expected"), LIST_CASES)
def test_a_yaml_list_and_a_comma_list_give_the_same_config(tmp_path, key, yaml_value, cli_value,
                                                           expected):  # fmt: skip
    section, leaf = key.split(".")
    text = f"preset: tiny_test\n{section}:\n  {leaf}: {yaml_value}\n"
    from_yaml = load_config(write(tmp_path, text))
    from_cli = load_config(TINY_YAML, [f"{key}={cli_value}"])
    from_cli_brackets = load_config(TINY_YAML, [f"{key}={yaml_value}"])
    assert getattr(getattr(from_yaml, section), leaf) == expected
    assert from_yaml == from_cli == from_cli_brackets
    # A comma string in a YAML file still works (the files' old spelling).
    quoted = f'preset: tiny_test\n{section}:\n  {leaf}: "{cli_value}"\n'
    assert load_config(write(tmp_path, quoted, "old.yaml")) == from_yaml


@pytest.mark.parametrize(("override", "expected"), [
    ("pipeline.methods=ssft,sft-mixed",
     ["pipeline.methods=", "'sft-mixed'", "'ssft', 'sft_mixed', 'random', 'single'",
      "Did you mean 'sft_mixed'?"]),
    ("sweep.costs=mean_nll,l2", ["sweep.costs=", "'l2'", "one of 'mean_nll', 'sum_nll'"]),
    ("sweep.baselines=sft_mixed,ssft", ["sweep.baselines=", "item 2, 'ssft'",
                                        "one of 'sft_mixed', 'random', 'single'"]),
    ("pipeline.seeds=0,x", ["pipeline.seeds=", "'x'", "must be an integer"]),
    ("sweep.prefixes=none,-4", ["sweep.prefixes=", "must be >= 1 (-4 is not)"]),
    ("sweep.num_tags=0,2", ["sweep.num_tags=[0, 2]", "must be >= 1 (0 is not)"]),
    ("sweep.num_tags=2,2", ["sweep.num_tags=[2, 2]", "once (2 repeats)"]),
    ("sweep.prefixes=none,all", ["sweep.prefixes=[null, null]", "once"]),
    ("pipeline.methods=", ["pipeline.methods=[]", "at least one", "pipeline.methods=ssft,"]),
    ("pipeline.seeds=true", ["pipeline.seeds=", "'true'", "an integer"]),
])  # fmt: skip
def test_a_bad_list_item_names_the_key_the_item_and_the_choices(override, expected):
    msg = error(load_config, TINY_YAML, [override])
    for part in expected:
        assert part in msg, (part, msg)


def test_a_bad_list_in_a_yaml_file_names_the_file(tmp_path):
    msg = error(
        load_config, write(tmp_path, "preset: tiny_test\nsweep:\n  costs: [mean_nll, l1]\n")
    )
    assert "sweep.costs=['mean_nll', 'l1']: item 2, 'l1'" in msg and "run.yaml" in msg
    msg = error(load_config, write(tmp_path, "preset: tiny_test\nsweep:\n  num_tags: {a: 1}\n"))
    assert "sweep.num_tags={'a': 1}: expected a list of int, got dict" in msg


def test_lists_round_trip_through_yaml_and_dicts(tmp_path):
    cfg = tiny("pipeline.methods=random,ssft", "pipeline.seeds=4,2", "sweep.num_tags=3",
               "sweep.prefixes=8,none", "sweep.baselines=")  # fmt: skip
    text = config_to_yaml(cfg)
    assert "  seeds:\n  - 4\n  - 2\n" in text and "  baselines: []\n" in text
    assert "  prefixes:\n  - 8\n  - null\n" in text
    assert load_config(write(tmp_path, text)) == cfg
    d = config_to_dict(cfg)
    assert d["sweep"]["prefixes"] == [8, None] and config_from_dict(d) == cfg
    flat = flatten_config(cfg)  # MLflow params: one comma-separated value per list
    assert (flat["pipeline.seeds"], flat["sweep.prefixes"], flat["sweep.baselines"]) == (
        "4,2", "8,none", ""
    )  # fmt: skip


def test_lists_assigned_by_hand_are_checked_by_validate():
    cfg = tiny_test()
    cfg.pipeline.seeds = [5, 6]
    assert cfg.validate().pipeline.seeds == (5, 6)
    cfg.sweep.costs = ("l2",)
    assert "sweep.costs=['l2']: item 1, 'l2'" in error(cfg.validate)


def test_the_hf_teachers_preset_points_at_a_server_with_two_overrides():
    cfg = parse_cli(["--config", "workflows/configs/hf_teachers.yaml",
                     "build.teachers.smollm2.kind=openai",
                     "build.teachers.smollm2.base_url=http://127.0.0.1:8000/v1"])  # fmt: skip
    [teacher] = cfg.build.teachers
    assert (teacher.kind, teacher.base_url) == ("openai", "http://127.0.0.1:8000/v1")
    assert teacher.model == "models/smollm2-135m-instruct"  # vLLM's served name for that path
    assert teacher.answer_extraction == "final_answer"


# --- sweep: evaluation and ranking ------------------------------------------------------------


def test_sweep_rank_by_takes_a_metric_and_defaults_to_pass1_when_evaluating(tmp_path):
    assert tiny().sweep.ranked_by == "final_loss"  # no evaluation: the loss is all there is
    assert tiny("sweep.evaluate=true").sweep.ranked_by == "pass1"
    cfg = load_config(write(tmp_path, "preset: tiny_test\nsweep:\n  evaluate: true\n"
                                      "  rank_by: per_question_purity\n"))  # fmt: skip
    assert (cfg.sweep.evaluate, cfg.sweep.ranked_by) == (True, "per_question_purity")
    assert tiny("sweep.rank_by=final_loss").sweep.ranked_by == "final_loss"
    assert config_from_dict(config_to_dict(cfg)) == cfg
    msg = error(tiny, "sweep.evaluate=true", "sweep.rank_by=pass_1")
    assert "sweep.rank_by='pass_1': must be one of 'pass1', 'cons_native'" in msg
    assert "Did you mean sweep.rank_by=pass1?" in msg


@pytest.mark.parametrize("metric", ["pass1", "cons_native", "mode_purity", "per_question_purity",
                                    "tag_accuracy_min"])  # fmt: skip
def test_sweep_rank_by_an_evaluation_metric_needs_sweep_evaluate(tmp_path, metric):
    msg = error(tiny, f"sweep.rank_by={metric}")
    assert f"sweep.rank_by='{metric}': needs an evaluation" in msg
    assert "sweep.evaluate=false" in msg and "Set sweep.evaluate=true" in msg
    msg = error(load_config, write(tmp_path, f"preset: tiny_test\nsweep:\n  rank_by: {metric}\n"))
    assert "sweep.evaluate=false" in msg and "run.yaml" in msg
