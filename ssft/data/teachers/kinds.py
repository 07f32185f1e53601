"""The teacher kinds, in one table: the config's choices and help text, the fields each kind
requires, and the class ``build_teacher`` imports are all read from here.

A new backend is one entry here and its module. Importing this module imports nothing
heavy (the implementation is named, not imported), so loading a config stays light and a
missing optional dependency (vLLM on a CPU machine) only matters when that kind is used.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str
    implementation: str  # "package.module:Class", a subclass of ssft.data.teachers.base.Teacher
    required: tuple[str, ...]  # TeacherConfig fields a teacher of this kind must set
    help: str


TEACHER_KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("hf", "ssft.data.teachers.hf:HFTeacher", ("model",),
             "a transformers model on this machine"),
        Kind("vllm", "ssft.data.teachers.vllm:VLLMTeacher", ("model",),
             "the same through vLLM"),
        Kind("openai", "ssft.data.teachers.openai_compat:OpenAITeacher", ("base_url", "model"),
             "an OpenAI-compatible HTTP server"),
        Kind("replay", "ssft.data.teachers.replay:ReplayTeacher", ("replay_path",),
             "traces read from a file"),
        Kind("strategy", "ssft.data.teachers.strategy:StrategyTeacher", ("strategy",),
             "a known-modes rule-based solver (no model)"),
    )
}  # fmt: skip
TEACHER_KIND_NAMES: tuple[str, ...] = tuple(TEACHER_KINDS)


def kinds_help() -> str:
    """``'hf' = ...; 'vllm' = ...`` for the config's help text."""
    return "; ".join(f"'{k.name}' = {k.help}" for k in TEACHER_KINDS.values()) + "."
