"""Teachers: where reasoning traces come from. One interface, several backends.

``build_teacher(cfg)`` returns the backend named by ``cfg.kind``; backends register
themselves by name (``hf``, ``openai``, ``vllm``, ``replay``, ``strategy``) and are imported
lazily, so a missing optional dependency (vLLM on a CPU machine) only matters when used.
"""

from ssft.data.teachers.base import (
    TEACHER_KINDS,
    Question,
    Sample,
    Teacher,
    build_teacher,
    register_teacher,
)

__all__ = ["TEACHER_KINDS", "Question", "Sample", "Teacher", "build_teacher", "register_teacher"]
