"""Teachers: where reasoning traces come from. One interface, several backends.

``build_teacher(cfg)`` returns the backend named by ``cfg.kind``; the kinds are one table
(``ssft.data.teachers.kinds``: ``hf``, ``openai``, ``vllm``, ``replay``, ``strategy``) whose
modules are imported lazily, so a missing optional dependency (vLLM on a CPU machine) only
matters when used.
"""

from ssft.data.teachers.base import Question, Sample, Teacher, build_teacher
from ssft.data.teachers.kinds import TEACHER_KIND_NAMES, TEACHER_KINDS

__all__ = ["TEACHER_KINDS", "TEACHER_KIND_NAMES", "Question", "Sample", "Teacher", "build_teacher"]
