"""How many CHAMP transcripts each answer-extraction mode accepts, and grades correct.

CHAMP's teachers (GPT-3.5, GPT-4, GPT-4 Turbo, PaLM 2 Medium) were never asked to box their
answer, so the strict ``boxed`` mode rejects almost everything they wrote. This prints, per
mode and per place the answer is read from (the solution, or the one-sentence summary CHAMP
asked for after it), how many transcripts yield an answer and how many grade correct, per
teacher; then how the automatic grade agrees with CHAMP's human first-wrong-step
annotations where they exist; then, with ``--show N``, N accepted-correct transcripts per
mode to read by hand (the README's "checked by reading" figures come from that).

    python benchmarks/champ_extraction.py            # ~2-4 minutes on 2 cores
    python benchmarks/champ_extraction.py --show 20 --seed 0
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssft.data.grading import EXTRACTIONS, grade
from ssft.data.teachers.replay import (
    CHAMP_REFERENCE_TEACHER,
    champ_questions,
    champ_replay_rows,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--show", type=int, default=0, help="print N accepted samples per mode")
    parser.add_argument("--seed", type=int, default=0, help="which samples --show picks")
    parser.add_argument("--limit", type=int, default=None,
                        help="grade only the first N transcripts (a quick check)")  # fmt: skip
    args = parser.parse_args(argv)
    start = time.monotonic()
    gold = {q.question_id: q.gold_answer for q in champ_questions()}
    rows = [r for r in champ_replay_rows() if r["teacher"] != CHAMP_REFERENCE_TEACHER]
    rows = rows[: args.limit]
    teachers = sorted({r["teacher"] for r in rows})
    print(f"{len(rows)} CHAMP transcripts ({len(gold)} problems, partial-solution variants out)")
    accepted: dict[tuple[str, str], Counter] = defaultdict(Counter)
    correct: dict[tuple[str, str], Counter] = defaultdict(Counter)
    agree: dict[tuple[str, str], Counter] = defaultdict(Counter)
    picked: dict[tuple[str, str], list] = defaultdict(list)
    for row in rows:
        for where in ("solution", "summary"):
            text = row["text"] if where == "solution" else row["summary"]
            if text is None:
                continue
            for mode in EXTRACTIONS:
                parsed, ok = grade(gold[row["question_id"]], text, mode)
                key = (mode, where)
                accepted[key][row["teacher"]] += parsed is not None
                correct[key][row["teacher"]] += ok
                if row["human_correct"] is not None:
                    agree[key][(row["human_correct"], ok)] += 1
                if ok:
                    picked[key].append((row, parsed))
    header = f"{'mode':<16}{'read from':<10}" + "".join(f"{t[:13]:>15}" for t in teachers)
    print("\naccepted (an answer found) / graded correct, per teacher")
    print(header + f"{'all':>15}")
    for key in accepted:
        cells = [f"{accepted[key][t]:>6} / {correct[key][t]:<6}" for t in teachers]
        total = f"{sum(accepted[key].values()):>6} / {sum(correct[key].values()):<6}"
        print(f"{key[0]:<16}{key[1]:<10}" + "".join(f"{c:>15}" for c in cells) + f"{total:>15}")
    print("\nagreement with CHAMP's human annotations (annotated transcripts only)")
    print(f"{'mode':<16}{'read from':<10}{'human ok, auto ok':>19}{'human ok, auto no':>19}"
          f"{'human no, auto ok':>19}{'human no, auto no':>19}")  # fmt: skip
    cells = ((True, True), (True, False), (False, True), (False, False))
    for key, c in agree.items():
        print(f"{key[0]:<16}{key[1]:<10}" + "".join(f"{c[cell]:>19}" for cell in cells))
    rng = random.Random(args.seed)
    for key, items in picked.items() if args.show else ():
        print(f"\n=== {args.show} graded-correct samples, mode {key[0]}, read from {key[1]} ===")
        for row, parsed in rng.sample(items, min(args.show, len(items))):
            text = row["text"] if key[1] == "solution" else row["summary"]
            print(f"- {row['question_id']} [{row['teacher']}] gold {gold[row['question_id']]!r} "
                  f"parsed {parsed!r}: ...{text[-200:]!r}")  # fmt: skip
    print(f"\nwall time {time.monotonic() - start:.0f}s")


if __name__ == "__main__":
    main()
