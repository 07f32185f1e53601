"""A user's mode classifier, imported by ``eval.mode_classifier=tests.modes_plugin:by_first_word``
in the tests: the label is the text's first word."""


def by_first_word(text: str) -> str | None:
    words = text.split()
    return words[0].lower() if words else None


def not_a_label(text: str) -> int:
    return len(text)
