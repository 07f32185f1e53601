"""The error types of bad user input, which every layer raises (so they live at the bottom)."""


class InputError(ValueError):
    """Bad user input (a config, a data file, a model directory), never a bug in ssft.

    The base of every loader's error type (``ConfigError``, ``trace_set.TraceSetError``,
    ``question_sources.QuestionFileError``, ``teachers.replay.ReplayFileError``). Its message is
    one paragraph naming the file, row and field and the fix, so an entrypoint prints it alone
    (``workflows.cli.run_main``) instead of a traceback. A ``ValueError`` for callers that
    predate it.
    """


class ConfigError(InputError):
    """An invalid config key, value or combination; the message names the key, rule and fix."""
