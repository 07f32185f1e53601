r"""Known-modes task: addition solved by four structurally different strategies.

SSFT claims to keep reasoning modes apart where plain SFT mixes them. To measure that we need
questions with several clearly different correct traces and a deterministic classifier
trace -> strategy. A question is `a + b` (`digits` digits each, default 2); every strategy
renders a short trace (lines joined by "\n", <= ~45 characters at digits=2) ending in
`\boxed{a+b}`. For 37 + 58 (shown with "|" for "\n"):

    column    7+8=15 c1|3+5+1=9|\boxed{95}         columns right to left; "+1" carry in,
                                                   " c1" carry out; answer read off the sums
    split     30+50=80|7+8=15|80+15=95|\boxed{95}  place values high to low, then one sum
    round     58=60-2|37+60=97|97-2=95|\boxed{95}  b rounded UP to a multiple of ten, a added,
                                                   then compensated (the only "-" strategy)
    count_on  58+30=88+7=95|\boxed{95}             one chained line from max(a, b), counting
                                                   on the smaller one's tens, then ones

Shared first characters (METHOD.md pitfall: a short prefix cost splits strategies by their
first tokens): every trace starts with a digit of the question, column with a's ones digit,
split with a's leading digit, round with b, count_on with max(a, b). The first character never
identifies the strategy; round and count_on share their first `digits` characters whenever
b >= a; split and count_on share the first one when a >= b. At digits=2 the layouts differ by
character 3 ("d+", "d0+", "dd=", "dd+"), so a prefix of >= 4 characters separates all four.

Degenerate operands: make_questions only draws operands whose ones digit is not 0 (so round
really rounds, split and count_on have a ones part). `render` still accepts any a, b >= 10 and
keeps each layout (round writes "50=50-0").

Slips (`slip=True`): one plausible error that propagates to a wrong boxed answer, layout kept:
column drops a carry or writes a column sum off by one; split writes a partial sum off by its
place value or the final sum off by ten; round adds off by ten or compensates off by one;
count_on lands one jump off by its place value.

Classifier contract (`classify`): the whole text (strip special tokens first) must be body
lines plus a last line `\boxed{<digits>}`, and the body must match exactly one strategy's line
grammar AND data flow: values a line uses equal what an earlier line wrote, the boxed value is
the last result written (column: "+1" only after " c1", " c1" iff the sum is >= 10, the boxed
value is the number read off the sums; count_on: the start is >= the smaller operand). The
arithmetic inside a line is never checked, so slips keep their strategy; shuffled lines break
the data flow and give "unknown", except column lines whose swap still reads off the boxed
value (e.g. "1+2=3|3+0=3|\boxed{33}"): without the question they are a valid column trace.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ssft.atomic_io import write_text_atomic
from ssft.data.teachers.base import Question

STRATEGIES: tuple[str, ...] = ("column", "split", "round", "count_on")
UNKNOWN = "unknown"
MIN_DIGITS, MAX_DIGITS = 2, 6
_SOURCE = re.compile(r"known_modes/addition-d\d+")


def is_benchmark_source(source: str) -> bool:
    """Whether a question's ``source`` is this benchmark's own (``known_modes/addition-d<k>``),
    not merely a name that starts the same way."""
    return _SOURCE.fullmatch(source) is not None


# A fault is (kind, step, delta): add `delta` to the result written at `step` of `kind`
# ("drop" omits the carry into column `step`). Later steps use the wrong value: it propagates.
Fault = tuple[str, int, int]


@dataclass(frozen=True)
class AdditionQuestion(Question):
    """A benchmark question: the one ``Question`` (``ssft.data.teachers``), plus its operands.

    The prompt is ``f"{a} + {b} = ?"``, so ``a`` and ``b`` add nothing a teacher needs; they
    are kept for rendering (``sample_trace``) and are written to the question files (``main``).
    ``question_sources`` hands teachers the plain ``Question`` (``as_question``), which is what
    travels to Ray workers as a dict.
    """

    a: int
    b: int

    def as_question(self) -> Question:
        """The plain ``Question`` (without the operands)."""
        return Question(self.question_id, self.prompt, self.gold_answer, self.source)


def _delta(fault: Fault | None, kind: str, step: int) -> int:
    return fault[2] if fault is not None and fault[:2] == (kind, step) else 0


def _digit(x: int, p: int) -> int:
    return (x // 10**p) % 10


def _width(a: int, b: int) -> int:
    return max(len(str(a)), len(str(b)))


def _column(a: int, b: int, fault: Fault | None) -> tuple[list[str], int]:
    lines, carry, answer, n = [], 0, 0, _width(a, b)
    for i in range(n):
        carry_in = 0 if fault == ("drop", i, 0) else carry
        s = _digit(a, i) + _digit(b, i) + carry_in + _delta(fault, "sum", i)
        plus_one, carry_out = "+1" if carry_in else "", " c1" if s >= 10 else ""
        lines.append(f"{_digit(a, i)}+{_digit(b, i)}{plus_one}={s}{carry_out}")
        answer += (s % 10) * 10**i
        carry = s // 10
    return lines, answer + carry * 10**n


def _column_faults(a: int, b: int) -> list[Fault]:
    faults, carry = [], 0
    for i in range(_width(a, b)):
        s = _digit(a, i) + _digit(b, i) + carry
        faults += [("sum", i, d) for d in (1, -1) if 0 <= s + d <= 19]
        if carry:  # only a carry INTO a column can be dropped; the final one is never written
            faults.append(("drop", i, 0))
        carry = s // 10
    return faults


def _split(a: int, b: int, fault: Fault | None) -> tuple[list[str], int]:
    lines, parts = [], []
    for p in range(_width(a, b) - 1, -1, -1):
        x, y = _digit(a, p) * 10**p, _digit(b, p) * 10**p
        parts.append(x + y + _delta(fault, "place", p))
        lines.append(f"{x}+{y}={parts[-1]}")
    answer = sum(parts) + _delta(fault, "combine", 0)
    lines.append("+".join(map(str, parts)) + f"={answer}")
    return lines, answer


def _split_faults(a: int, b: int) -> list[Fault]:
    faults = []
    for p in range(_width(a, b)):
        part = (_digit(a, p) + _digit(b, p)) * 10**p
        faults += [("place", p, d) for d in (10**p, -(10**p)) if part + d >= 0]
    return faults + [("combine", 0, d) for d in (10, -10) if a + b + d >= 0]


def _round(a: int, b: int, fault: Fault | None) -> tuple[list[str], int]:
    k = -b % 10
    s = a + b + k + _delta(fault, "add", 0)
    answer = s - k + _delta(fault, "compensate", 0)
    return [f"{b}={b + k}-{k}", f"{a}+{b + k}={s}", f"{s}-{k}={answer}"], answer


def _round_faults(a: int, b: int) -> list[Fault]:
    return [("add", 0, 10), ("add", 0, -10), ("compensate", 0, 1), ("compensate", 0, -1)]


def _count_on(a: int, b: int, fault: Fault | None) -> tuple[list[str], int]:
    big, small = max(a, b), min(a, b)
    chain, x = str(big), big
    for p in range(len(str(small)) - 1, -1, -1):
        jump = _digit(small, p) * 10**p
        x += jump + _delta(fault, "jump", p)
        chain += f"+{jump}={x}"
    return [chain], x


def _count_on_faults(a: int, b: int) -> list[Fault]:
    # big >= small >= 10**p, so landing 10**p short never goes negative.
    return [("jump", p, s * 10**p) for p in range(len(str(min(a, b)))) for s in (1, -1)]


_RENDERERS: dict[str, tuple[Callable, Callable]] = {
    "column": (_column, _column_faults),
    "split": (_split, _split_faults),
    "round": (_round, _round_faults),
    "count_on": (_count_on, _count_on_faults),
}
assert tuple(_RENDERERS) == STRATEGIES, (tuple(_RENDERERS), STRATEGIES)


def render(
    a: int, b: int, strategy: str, *, slip: bool = False, rng: random.Random | None = None
) -> str:
    """The trace of `strategy` for a + b, ending in \\boxed{a+b} (or, with slip, a wrong sum).

    With slip=True one fault is drawn from `rng` (default: a Random seeded by a, b, strategy, so
    the call stays deterministic).
    """
    if strategy not in _RENDERERS:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if not all(isinstance(x, int) and x >= 10 for x in (a, b)):
        raise ValueError(f"operands must be ints >= 10 (two digits or more), got a={a!r} b={b!r}")
    renderer, faults = _RENDERERS[strategy]
    fault = None
    if slip:
        rng = rng if rng is not None else random.Random(f"slip/{strategy}/{a}+{b}")
        fault = rng.choice(faults(a, b))
    lines, answer = renderer(a, b, fault)
    assert (answer == a + b) == (fault is None), (a, b, strategy, fault, answer)
    return "\n".join([*lines, f"\\boxed{{{answer}}}"])


def parse_answer(text: str) -> str | None:
    """The content of the last balanced \\boxed{...} in text, or None."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth = 0
        for j in range(start + len("\\boxed"), len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[start + len("\\boxed{") : j]
        start = text.rfind("\\boxed{", 0, start)
    return None


_BOXED_LINE = re.compile(r"\\boxed\{(\d+)\}")
_COLUMN_LINE = re.compile(r"(\d)\+(\d)(\+1)?=(\d+)( c1)?")
_SUM_LINE = re.compile(r"(\d+)\+(\d+)=(\d+)")
_ROUND_LINE = re.compile(r"(\d+)=(\d+)-(\d)")
_COMPENSATE_LINE = re.compile(r"(\d+)-(\d)=(\d+)")
_CHAIN_LINE = re.compile(r"\d+(?:\+\d+=\d+)+")


def _is_place(token: str, p: int) -> bool:
    """token is 0 or one nonzero digit followed by p zeros."""
    return token == "0" or re.fullmatch(rf"[1-9]0{{{p}}}", token) is not None


def _is_column(body: list[str], answer: int) -> bool:
    cols = [_COLUMN_LINE.fullmatch(line) for line in body]
    if len(cols) < 2 or any(m is None for m in cols):
        return False
    read_off, carry = 0, False
    for i, m in enumerate(cols):
        s, carry_out = int(m[4]), m[5] is not None
        if (m[3] and not carry) or carry_out != (s >= 10) or s > 19:
            return False
        read_off, carry = read_off + (s % 10) * 10**i, carry_out
    return read_off + carry * 10 ** len(cols) == answer


def _is_split(body: list[str], answer: int) -> bool:
    n = len(body) - 1
    places = [_SUM_LINE.fullmatch(line) for line in body[:-1]]
    if n < 2 or any(m is None for m in places):
        return False
    if not all(
        _is_place(m[1], n - 1 - i) and _is_place(m[2], n - 1 - i) for i, m in enumerate(places)
    ):
        return False
    operands, _, result = body[-1].rpartition("=")
    return operands.split("+") == [m[3] for m in places] and result == str(answer)


def _is_round(body: list[str], answer: int) -> bool:
    if len(body) != 3:
        return False
    lines = zip((_ROUND_LINE, _SUM_LINE, _COMPENSATE_LINE), body, strict=True)
    rounded, add, comp = (pattern.fullmatch(line) for pattern, line in lines)
    if rounded is None or add is None or comp is None or int(rounded[2]) % 10:
        return False
    return (add[2], comp[1], comp[2], comp[3]) == (rounded[2], add[3], rounded[3], str(answer))


def _is_count_on(body: list[str], answer: int) -> bool:
    if len(body) != 1 or _CHAIN_LINE.fullmatch(body[0]) is None:
        return False
    tokens = re.split(r"[+=]", body[0])  # start, jump1, landing1, jump2, landing2, ...
    start, jumps, landings = tokens[0], tokens[1::2], tokens[2::2]
    m = len(jumps)
    if m < 2 or not all(_is_place(j, m - 1 - i) for i, j in enumerate(jumps)):
        return False
    return int(start) >= sum(map(int, jumps)) and landings[-1] == str(answer)


_CLASSIFIERS: dict[str, Callable[[list[str], int], bool]] = {
    "column": _is_column,
    "split": _is_split,
    "round": _is_round,
    "count_on": _is_count_on,
}


def classify(text: str) -> str:
    """The strategy whose layout and data flow the whole trace matches, else "unknown"."""
    lines = [line.strip() for line in text.strip().split("\n")]
    boxed = _BOXED_LINE.fullmatch(lines[-1]) if len(lines) >= 2 else None
    if boxed is None:
        return UNKNOWN
    matches = [name for name, ok in _CLASSIFIERS.items() if ok(lines[:-1], int(boxed[1]))]
    return matches[0] if len(matches) == 1 else UNKNOWN


_LAYOUTS: dict[str, Callable[[list[str]], bool]] = {
    "column": lambda b: len(b) >= 2 and all(_COLUMN_LINE.fullmatch(x) for x in b),
    "split": lambda b: (
        len(b) >= 3
        and re.fullmatch(r"\d0+\+\d0+=\d+", b[0]) is not None  # starts with the highest place
        and all(_SUM_LINE.fullmatch(x) for x in b[:-1])
        and re.fullmatch(r"\d+(?:\+\d+)+=\d+", b[-1]) is not None
    ),
    "round": lambda b: (
        len(b) == 3
        and all(
            p.fullmatch(x)
            for p, x in zip((_ROUND_LINE, _SUM_LINE, _COMPENSATE_LINE), b, strict=True)
        )
    ),
    "count_on": lambda b: len(b) == 1 and _CHAIN_LINE.fullmatch(b[0]) is not None,
}


def classify_layout(text: str) -> str:
    """The strategy whose LINE LAYOUT the trace follows, ignoring whether its numbers flow.

    Looser than ``classify``: a model that writes a strategy's layout with wrong arithmetic
    still follows that strategy (the reasoning mode), which is what mode purity measures.
    Ends with a ``\\boxed{<digits>}`` line; exactly one layout must match, else "unknown".
    """
    lines = [line.strip() for line in text.strip().split("\n")]
    if len(lines) < 2 or _BOXED_LINE.fullmatch(lines[-1]) is None:
        return UNKNOWN
    matches = [name for name, ok in _LAYOUTS.items() if ok(lines[:-1])]
    return matches[0] if len(matches) == 1 else UNKNOWN


def sample_trace(
    q: AdditionQuestion, strategy: str, *, error_rate: float, rng: random.Random
) -> str:
    """render(q.a, q.b, strategy), slipping with probability error_rate."""
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate!r}")
    return render(q.a, q.b, strategy, slip=rng.random() < error_rate, rng=rng)


def make_questions(n: int, *, seed: int, digits: int = 2) -> list[AdditionQuestion]:
    """n questions a + b with distinct unordered pairs {a, b}, deterministic by (seed, digits).

    Operands have exactly `digits` digits and a nonzero ones digit. The draw is one stream per
    (seed, digits): make_questions(n) is a prefix of make_questions(n + 1), and question_id
    holds the position in that stream.
    """
    if not MIN_DIGITS <= digits <= MAX_DIGITS:
        raise ValueError(f"digits must be in [{MIN_DIGITS}, {MAX_DIGITS}], got {digits!r}")
    operands = 81 * 10 ** (digits - 2)  # leading digit 1-9, ones digit 1-9
    capacity = operands * (operands + 1) // 2
    if not 0 <= n <= capacity:
        raise ValueError(f"n={n} but digits={digits} has {capacity} distinct pairs; lower n")
    rng = random.Random(f"known_modes/addition-d{digits}/seed{seed}")

    def draw() -> int:
        while (x := rng.randrange(10 ** (digits - 1), 10**digits)) % 10 == 0:
            pass
        return x

    seen: set[tuple[int, int]] = set()
    questions: list[AdditionQuestion] = []
    while len(questions) < n:
        a, b = draw(), draw()
        if (min(a, b), max(a, b)) in seen:
            continue
        seen.add((min(a, b), max(a, b)))
        qid = f"add{digits}-s{seed}-{len(questions):05d}"
        source = f"known_modes/addition-d{digits}"
        questions.append(AdditionQuestion(qid, f"{a} + {b} = ?", str(a + b), source, a, b))
    return questions


def make_splits(
    n_train: int, n_test: int, *, seed: int, digits: int = 2
) -> tuple[list[AdditionQuestion], list[AdditionQuestion]]:
    """(train, test), disjoint as unordered pairs. Test takes the stream's first n_test
    questions, so it does not change when n_train grows."""
    questions = make_questions(n_test + n_train, seed=seed, digits=digits)
    return questions[n_test:], questions[:n_test]


def main(argv: list[str] | None = None) -> None:
    """Write train/test question files and definition.json for the known-modes task."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-test", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--digits", type=int, default=2)
    args = parser.parse_args(argv)
    train, test = make_splits(args.n_train, args.n_test, seed=args.seed, digits=args.digits)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, questions in (("train", train), ("test", test)):
        lines = "".join(json.dumps(asdict(q)) + "\n" for q in questions)
        write_text_atomic(args.out / f"{name}_questions.jsonl", lines)
    definition = {
        "generator": "ssft.known_modes",
        "task": "addition",
        "digits": args.digits,
        "seed": args.seed,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "strategies": list(STRATEGIES),
    }
    write_text_atomic(args.out / "definition.json", json.dumps(definition, indent=2) + "\n")


if __name__ == "__main__":
    main()
