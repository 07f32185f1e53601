r"""Evaluation metrics as pure functions over a table of graded samples (METHOD.md, "Evaluation
protocol"; ECOSYSTEM.md, "Grading and metrics").

Input: a list of row mappings or a pyarrow table, one row per sample, with columns

    question_id  tag ("<think2>")  sample_index (per question and tag)  text
    parsed_answer (boxed content or None)  correct (grade(gold, text))  num_tokens
    strategy (known_modes.classify_layout(text), "unknown", or None when not classified)
    teacher (ssft.data.teacher_attribution: the teacher the sample reads like, "unknown" or None)

"The samples of a question under a tag" are its rows for that (question_id, tag), ordered by
sample_index; the g-th of them is "sample g". Averages over questions are macro averages: each
question counts once, whatever its number of samples.

Votes need no gold: the voted answer is the parsed answer of one sample (the representative,
the earliest sample of the winning group) and the vote is correct iff that sample is. Two
answers vote together when ``math_verify.verify(representative, answer)`` holds (the
representative first, as gold is in grading) or the stripped strings are equal.

Self-selected samples (``evaluation.evaluate_questions(self_selected=True)``: the model drew
each sample's tag itself) have their own figures, ``self_selected_metrics``: there
sample_index numbers a question's samples across tags (draw order), so votes take them in
that order, with the same voting helper and tie rule as Cons@N.

Mode diagnostics (``tag_label_counts``, ``mode_purity``, ``question_tag_purity``,
``distinct_labels_per_question``) read one label column: ``strategy`` (the known-modes
layout classifier) or ``teacher`` (``ssft.data.teacher_attribution``); rows whose label is None
are ignored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from math_verify import verify

from ssft.data import grading
from ssft.data.known_modes import UNKNOWN

Rows = Sequence[Mapping[str, Any]] | Any  # or a pyarrow.Table (anything with to_pylist())
_REQUIRED = ("question_id", "tag", "sample_index", "correct")


def _as_rows(rows: Rows) -> list[Mapping[str, Any]]:
    rows = rows.to_pylist() if hasattr(rows, "to_pylist") else list(rows)
    if missing := [c for c in _REQUIRED if rows and c not in rows[0]]:
        raise ValueError(f"sample rows lack columns {missing}; a row has {sorted(rows[0])}")
    return rows


def tag_sort_key(tag: str) -> tuple:
    """Natural order: "<think2>" before "<think10>"."""
    return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", tag)))


def _index(rows: Rows) -> dict[str, dict[str, list[Mapping[str, Any]]]]:
    """question_id -> tag -> that question's samples under the tag, in sample_index order."""
    out: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    rows = _as_rows(rows)
    if not rows:
        raise ValueError("no sample rows: every metric needs at least one graded sample")
    for row in rows:
        out.setdefault(row["question_id"], {}).setdefault(row["tag"], []).append(row)
    for qid, by_tag in out.items():
        for tag, samples in by_tag.items():
            samples.sort(key=lambda r: r["sample_index"])
            indices = [r["sample_index"] for r in samples]
            if len(set(indices)) != len(indices):
                raise ValueError(f"question {qid!r} tag {tag!r}: repeated sample_index {indices}")
    return dict(sorted(out.items()))


def _samples(by_tag: Mapping[str, list], qid: str, tag: str, need: int, what: str) -> list:
    samples = by_tag.get(tag, [])
    if len(samples) < need:
        raise ValueError(
            f"{what} needs {need} samples per question under tag {tag!r}; question {qid!r} "
            f"has {len(samples)}: sample more or lower k"
        )
    return samples


# ---- pass@k --------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. 2021 for one question: n samples, c of them correct.

    pass@k = 1 - C(n-c, k) / C(n, k), the chance that k samples drawn without replacement from
    the n include a correct one, computed as the stable product
    1 - prod_{i=n-c+1..n} (1 - k/i) (no huge binomials; n = 200 is fine).
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n} c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n = {n} samples; sample more or lower k")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


class PassAtKTable(NamedTuple):
    values: dict[int, float]  # k -> pass@k averaged over questions
    n: int  # samples per question (the fewest, if questions differ; each uses its own n)
    n_questions: int


def pass_at_k_table(rows: Rows, ks: Iterable[int], tag: str | None = None) -> PassAtKTable:
    """pass@k for each k, averaged over questions.

    n for a question is its number of samples: under ``tag``, or of all tags pooled when tag is
    None. Every question needs n >= max(ks).
    """
    ks = list(ks)
    per_q = []
    for qid, by_tag in _index(rows).items():
        tags = [tag] if tag is not None else list(by_tag)
        samples = [s for t in tags for s in _samples(by_tag, qid, t, 1, "pass@k")]
        n, c = len(samples), sum(bool(s["correct"]) for s in samples)
        if ks and n < max(ks):
            where = f"under tag {tag!r}" if tag is not None else "(all tags pooled)"
            raise ValueError(f"pass@{max(ks)}: question {qid!r} has only {n} samples {where}")
        per_q.append((n, [pass_at_k(n, c, k) for k in ks]))
    values = {k: float(np.mean([v[i] for _, v in per_q])) for i, k in enumerate(ks)}
    return PassAtKTable(values, min(n for n, _ in per_q), len(per_q))


def pass1(rows: Rows, tag: str) -> float:
    """Pass@1 under one tag: mean over questions of the share of its samples that are correct."""
    return pass_at_k_table(rows, [1], tag).values[1]


# ---- majority vote -------------------------------------------------------------------------


def _same(representative: str, answer: str) -> bool:
    if representative.strip() == answer.strip():
        return True
    if max(len(representative), len(answer)) > grading.MAX_ANSWER_CHARS:
        return False  # grading's guard: never parse overlong contents
    rep, ans = grading._parse(representative), grading._parse(answer)
    return bool(rep and ans and verify(list(rep), list(ans), timeout_seconds=grading._timeout()))


def _vote_index(answers: Sequence[str | None]) -> int | None:
    """Index of the representative of the winning group, None when no answer is given."""
    reps: list[int] = []  # index of each group's first answer, in order of first occurrence
    counts: list[int] = []
    for i, answer in enumerate(answers):
        if answer is None or not answer.strip():
            continue
        for g, rep in enumerate(reps):
            if _same(answers[rep], answer):
                counts[g] += 1
                break
        else:
            reps.append(i)
            counts.append(1)
    return reps[counts.index(max(counts))] if reps else None  # index(): earliest group wins


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent parsed answer, equivalent answers (``math_verify``) grouped.

    Groups form in sample order: an answer joins the earliest group whose representative (its
    first answer) equals it as a stripped string or verifies against it (representative
    first); otherwise it opens a new group. None and blank answers never vote, so they win
    only when all answers are missing (the result is then None). Ties go to the group whose
    first answer comes earliest, as ``max(answers, key=answers.count)`` does in lighteval's
    maj@n. Returns that first answer, as written.
    """
    i = _vote_index(answers)
    return None if i is None else answers[i]


def vote_correct(gold: str, answers: Sequence[str | None]) -> bool:
    """Whether the majority answer is correct against gold (``grading``, gold first)."""
    winner = majority_vote(answers)
    return winner is not None and grading.grade(gold, f"\\boxed{{{winner}}}")[1]


def _vote_is_correct(samples: Sequence[Mapping[str, Any]]) -> bool:
    i = _vote_index([s.get("parsed_answer") for s in samples])
    return i is not None and bool(samples[i]["correct"])


def cons_native(rows: Rows, tags: Sequence[str]) -> float:
    """Cons@N native, N = len(tags): group g is sample g of every tag (tags in the given order,
    which breaks ties), one majority vote per group; vote correctness is averaged over a
    question's groups (as many as its fewest samples under a tag), then over questions."""
    if not tags:
        raise ValueError("cons_native needs at least one tag")
    per_q = []
    for qid, by_tag in _index(rows).items():
        lists = [_samples(by_tag, qid, t, 1, "cons_native") for t in tags]
        groups = range(min(len(s) for s in lists))
        per_q.append(np.mean([_vote_is_correct([s[g] for s in lists]) for g in groups]))
    return float(np.mean(per_q))


def cons_at_k(rows: Rows, tags: Sequence[str], k: int) -> float:
    """Cons@k: one majority vote over k samples per question spread round-robin over the N tags.

    Vote slot j (0 <= j < k) takes sample j // N of tag j % N, so tag t supplies its samples
    0, 1, ... to slots t, t+N, ...; votes are cast in slot order (which breaks ties). The
    vote's correctness is averaged over questions.
    """
    if k < 1 or not tags:
        raise ValueError(f"cons@k needs k >= 1 and at least one tag, got k={k} tags={tags}")
    n_tags, per_q = len(tags), []
    for qid, by_tag in _index(rows).items():
        lists = [
            _samples(by_tag, qid, t, len(range(i, k, n_tags)), f"cons@{k} over {n_tags} tags")
            for i, t in enumerate(tags)
        ]
        per_q.append(_vote_is_correct([lists[j % n_tags][j // n_tags] for j in range(k)]))
    return float(np.mean(per_q))


def parallel_groups(
    rows: Rows, tags: Sequence[str], n: int | None = None
) -> tuple[list[Mapping[str, Any]], list[str]]:
    """``(rows, tags)`` in which "sample g of every tag" is the g-th group of N parallel samples:
    what Cons@N votes over and ``distinct_labels_per_question`` counts in.

    Several tags: the rows and tags as they are (N = len(tags), one sample per tag; ``n``, if
    given, must be len(tags)). One tag (a shared-tag method's) and ``n`` > 1: its samples are
    grouped n at a time, sample j becoming sample j // n of pseudo-tag ``"<tag>#<j % n>"``, so
    group g is samples gn .. gn + n - 1: "n parallel samples, then a vote" without forking
    tokens. Rows of other tags are left as they are. ``cons_at_k`` reads the same samples in
    the same order either way (its slot j is sample j).
    """
    rows, tags = _as_rows(rows), list(tags)
    if len(tags) > 1 and n not in (None, len(tags)):
        raise ValueError(f"{len(tags)} tags are groups of {len(tags)} samples, not of n={n}")
    if len(tags) != 1 or n is None or n == 1:
        return rows, tags
    shared = tags[0]
    pseudo = [f"{shared}#{i}" for i in range(n)]
    out = [
        r if r["tag"] != shared
        else {**r, "tag": pseudo[r["sample_index"] % n], "sample_index": r["sample_index"] // n}
        for r in rows
    ]  # fmt: skip
    return out, pseudo


# ---- per-tag accuracy and length -----------------------------------------------------------


class TagStats(NamedTuple):
    accuracy: float  # pass1(rows, tag): mean over questions of per-question accuracy
    mean_tokens: float  # over the tag's samples
    median_tokens: float
    n: int  # samples under the tag, all questions


def per_tag(rows: Rows) -> dict[str, TagStats]:
    """Accuracy and num_tokens statistics of every tag, tags in natural order."""
    rows = _as_rows(rows)
    out = {}
    for tag in sorted({r["tag"] for r in rows}, key=tag_sort_key):
        tokens = [r["num_tokens"] for r in rows if r["tag"] == tag]
        acc = pass1([r for r in rows if r["tag"] == tag], tag)
        out[tag] = TagStats(acc, float(np.mean(tokens)), float(np.median(tokens)), len(tokens))
    return out


def min_tag_accuracy(rows: Rows, tags: Sequence[str] | None = None) -> float:
    """The lowest per-tag accuracy (over ``tags``, default all). Report it next to the best tag
    and the votes: a duplicate tag can be wrong half the time while both stay perfect."""
    rows = _as_rows(rows)
    tags = tags if tags is not None else {r["tag"] for r in rows}
    return min(pass1([r for r in rows if r["tag"] == t], t) for t in tags)


# ---- mode diagnostics: a label per sample (strategy or attributed teacher) -------------------


def tag_label_counts(
    rows: Rows, label: str = "strategy"
) -> tuple[list[str], list[str], np.ndarray]:
    """(tags, labels, counts[len(tags), len(labels)]) over rows whose ``label`` is not None.

    Tags in natural order; labels alphabetical with "unknown" last; counts int64."""
    rows = [r for r in _as_rows(rows) if r.get(label) is not None]
    tags = sorted({r["tag"] for r in rows}, key=tag_sort_key)
    labels = sorted({r[label] for r in rows}, key=lambda s: (s == UNKNOWN, s))
    counts = np.zeros((len(tags), len(labels)), dtype=np.int64)
    for r in rows:
        counts[tags.index(r["tag"]), labels.index(r[label])] += 1
    return tags, labels, counts


def _dominant(counts: np.ndarray, labels: Sequence[str]) -> tuple[str, int]:
    """(most frequent KNOWN label, its count) of one count row; ("unknown", 0) if none."""
    known = [j for j, s in enumerate(labels) if s != UNKNOWN]
    if not known or counts[known].max() == 0:
        return UNKNOWN, 0
    best = known[int(np.argmax(counts[known]))]  # first maximum: alphabetical tie-break
    return labels[best], int(counts[best])


def mode_purity(rows: Rows, label: str = "strategy") -> tuple[dict[str, tuple[str, float]], float]:
    """Per tag (dominant label, share of its labelled samples that carry it), and the mean of
    the shares weighted by each tag's samples (= all dominant counts / all labelled samples).

    The dominant label is the most frequent KNOWN one (ties: alphabetically first);
    "unknown" samples never dominate and always count against purity, so a tag whose samples
    are garbage is impure, not "purely unknown". A tag with no known sample reports
    ("unknown", 0.0). This is purity ACROSS questions: does a tag mean one mode everywhere?
    """
    tags, labels, counts = tag_label_counts(rows, label)
    if not tags:
        raise ValueError(
            f"mode purity needs rows with a {label!r}; classify or attribute the samples first"
        )
    per, dominant_total = {}, 0
    for i, tag in enumerate(tags):
        name, count = _dominant(counts[i], labels)
        dominant_total += count
        per[tag] = (name, float(count / counts[i].sum()))
    return per, float(dominant_total / counts.sum())


def question_tag_purity(rows: Rows, label: str = "strategy") -> float:
    """Mean over (question, tag) pairs of the share of that pair's labelled samples carrying
    its dominant known label ("unknown" counts against, as in ``mode_purity``).

    Purity WITHIN a question: 1.0 means every tag is consistent for each question, even if a
    tag means different modes on different questions (which ``mode_purity`` would show).
    """
    shares = []
    for by_tag in _index(rows).values():
        for samples in by_tag.values():
            values = [r[label] for r in samples if r.get(label) is not None]
            if values:
                known = Counter(v for v in values if v != UNKNOWN)
                top = max(known.values()) if known else 0
                shares.append(top / len(values))
    if not shares:
        raise ValueError(f"question-tag purity needs rows with a {label!r}")
    return float(np.mean(shares))


def unknown_share(rows: Rows, label: str = "strategy") -> float:
    """Share of labelled samples whose label is "unknown" (unparseable or mixed traces)."""
    _, labels, counts = tag_label_counts(rows, label)
    if UNKNOWN not in labels or counts.sum() == 0:
        return 0.0
    return float(counts[:, labels.index(UNKNOWN)].sum() / counts.sum())


def distinct_labels_per_question(rows: Rows, tags: Sequence[str], label: str = "strategy") -> float:
    """Mean over questions of the number of distinct known labels among sample_index 0 of
    each tag ("unknown" and None excluded): N = len(tags) is the most, 1 means no diversity."""
    per_q = []
    for qid, by_tag in _index(rows).items():
        firsts = {t: r.get(label) for t in tags for r in by_tag.get(t, [])[:1]
                  if r["sample_index"] == 0}  # fmt: skip
        if missing := [t for t in tags if t not in firsts]:
            raise ValueError(f"question {qid!r} has no sample_index 0 under tags {missing}")
        per_q.append(len(set(firsts.values()) - {None, UNKNOWN}))
    return float(np.mean(per_q))


# label column -> (purity key stem, plural for "distinct ..."): the metric names it gets.
LABEL_KEYS = {"strategy": ("mode", "strategies"), "teacher": ("teacher", "teachers")}


def _labelled(rows: Rows, label: str) -> bool:
    return any(r.get(label) is not None for r in _as_rows(rows))


def label_metrics(
    rows: Rows, tags: Sequence[str], label: str, *, group_size: int | None = None
) -> dict[str, float]:
    """Mode diagnostics of one label column (``LABEL_KEYS``), {} when no row carries it.

    For "strategy": "mode_purity" (+ "mode_purity/<tag>"), "question_tag_mode_purity",
    "distinct_strategies", "unknown_strategy_share"; for "teacher": "teacher_purity", ...,
    "distinct_teachers", "unknown_teacher_share". Purities are per tag; the distinct labels
    are counted among each question's N parallel samples (``parallel_groups(rows, tags,
    group_size)``: one per tag, or a shared tag's samples ``group_size`` at a time).
    """
    if not _labelled(rows, label):
        return {}
    stem, plural = LABEL_KEYS[label]
    per, purity = mode_purity(rows, label)
    out = {f"{stem}_purity": purity}
    out |= {f"{stem}_purity/{t}": share for t, (_, share) in per.items()}
    out[f"question_tag_{stem}_purity"] = question_tag_purity(rows, label)
    groups = parallel_groups(rows, tags, group_size)
    out[f"distinct_{plural}"] = distinct_labels_per_question(*groups, label)
    out[f"unknown_{label}_share"] = unknown_share(rows, label)
    return out


def greedy_metrics(rows: Rows, tags: Sequence[str]) -> dict[str, float]:
    """One greedy answer per question and tag: "greedy_pass1/<tag>", their mean
    "greedy_accuracy_mean", and per labelled column "distinct_<plural>_greedy" (distinct
    known labels among a question's greedy answers, one per tag)."""
    out = {f"greedy_pass1/{t}": pass1(rows, t) for t in tags}
    out["greedy_accuracy_mean"] = sum(out.values()) / len(tags)
    for label, (_, plural) in LABEL_KEYS.items():
        if _labelled(rows, label):
            out[f"distinct_{plural}_greedy"] = distinct_labels_per_question(rows, tags, label)
    return out


# ---- self-selected tags: the model picks its tag --------------------------------------------


def tag_entropy(p: Iterable[float]) -> float:
    """Entropy in nats of a distribution over tags (renormalised; 0 ln 0 = 0)."""
    probs = np.asarray(list(p), dtype=np.float64)
    probs = probs[probs > 0] / probs.sum()
    return max(0.0, float(-(probs * np.log(probs)).sum()))  # never -0.0


def self_selected_metrics(
    rows: Rows,
    tags: Sequence[str],
    tag_probs: Rows | None = None,
    *,
    cons_k: int | None = None,
) -> dict[str, float]:
    """Figures of the self-selected samples (``rows``: only those; tag = the drawn tag,
    sample_index = draw order within the question), as a flat dict.

    "self/pass1": mean over questions of the share of correct samples; "self/cons_k": one
    majority vote over each question's first ``cons_k`` samples (default len(tags); the
    caller passes N, the run's number of forking tokens), "self/cons_all": over all of them,
    both averaged over questions, voted as ``cons_native`` votes (``_vote_is_correct``:
    earliest group wins a tie); "self/drawn/<tag>": share of all samples that drew the tag
    (every tag of ``tags``); "self/pass1/<tag>": share of the samples that drew the tag that
    are correct, pooled over questions (left out for a tag never drawn); "self/n_samples":
    the fewest samples of a question. With ``tag_probs`` (``sampling.tag_probabilities``
    rows, ``p_among_tags``; tags outside ``tags`` ignored): "self/tag_entropy" (mean over
    the questions of ``rows`` of their distribution's entropy, nats), "self/tag_entropy_max"
    (ln len(tags)) and "self/p/<tag>" (mean over those questions of p(tag)).
    """
    tags = list(tags)
    per_q: dict[str, list[Mapping[str, Any]]] = {}
    for r in _as_rows(rows):
        per_q.setdefault(r["question_id"], []).append(r)
    if not per_q:
        raise ValueError("no self-selected rows: nothing to compute self/ metrics from")
    if strangers := {r["tag"] for q in per_q.values() for r in q} - set(tags):
        raise ValueError(f"self-selected rows drew tags {sorted(strangers)} not in {tags}")
    k = len(tags) if cons_k is None else cons_k
    pass1s, cons, cons_all = [], [], []
    for qid, samples in sorted(per_q.items()):
        samples.sort(key=lambda r: r["sample_index"])
        indices = [r["sample_index"] for r in samples]
        if len(set(indices)) != len(indices):
            raise ValueError(f"question {qid!r}: repeated self-selected sample_index {indices}")
        if len(samples) < k:
            raise ValueError(
                f"self/cons_k votes over {k} samples; question {qid!r} has {len(samples)}"
            )
        pass1s.append(np.mean([bool(r["correct"]) for r in samples]))
        cons.append(_vote_is_correct(samples[:k]))
        cons_all.append(_vote_is_correct(samples))
    out = {"self/pass1": float(np.mean(pass1s)), "self/cons_k": float(np.mean(cons)),
           "self/cons_all": float(np.mean(cons_all))}  # fmt: skip
    everything = [r for samples in per_q.values() for r in samples]
    for t in tags:
        drew = [bool(r["correct"]) for r in everything if r["tag"] == t]
        out[f"self/drawn/{t}"] = len(drew) / len(everything)
        if drew:
            out[f"self/pass1/{t}"] = float(np.mean(drew))
    out["self/n_samples"] = float(min(len(v) for v in per_q.values()))
    if tag_probs is not None:
        dist: dict[str, dict[str, float]] = {}
        for r in _as_plain(tag_probs):
            if r["tag"] in tags:
                dist.setdefault(r["question_id"], {})[r["tag"]] = float(r["p_among_tags"])
        if missing := [q for q in per_q if set(dist.get(q, {})) != set(tags)]:
            raise ValueError(f"tag probabilities lack questions or tags: {missing[:5]}")
        out["self/tag_entropy"] = float(np.mean([tag_entropy(dist[q].values()) for q in per_q]))
        out["self/tag_entropy_max"] = float(np.log(len(tags)))
        for t in tags:
            out[f"self/p/{t}"] = float(np.mean([dist[q][t] for q in per_q]))
    return out


def _as_plain(rows: Rows) -> list[Mapping[str, Any]]:
    return rows.to_pylist() if hasattr(rows, "to_pylist") else list(rows)


# ---- everything, flat ----------------------------------------------------------------------


def summarize(
    rows: Rows,
    tags: Sequence[str],
    pass1_tag: str,
    ks: Sequence[int],
    *,
    group_size: int | None = None,
    cons_k: int | None = None,
) -> dict[str, float]:
    """All metrics over the rows under ``tags`` (other tags are dropped), as a flat dict.

    Keys: "pass1" (under pass1_tag); per tag t "pass1/t", "length_mean/t", "length_median/t",
    "n_samples/t"; "tag_accuracy_min", "tag_accuracy_mean" (over tags); "cons_native"; for
    k in ks "pass@k" (all tags pooled) and "cons@k"; "n_samples" (the n of pass@k) and
    "n_questions". With strategies or teachers also their ``label_metrics`` ("mode_purity",
    "teacher_purity", ...); with ``cons_k``, last, "cons_k" (Cons@cons_k). MLflow does not
    accept "@", "<" and ">" in keys: ``ssft.tracking`` logs them with "_" instead.

    Every vote and every count of distinct labels is computed here, once, over the
    ``parallel_groups(rows, tags, group_size)``: with one (shared) tag, ``group_size`` says how
    many of its samples make the N parallel samples of Cons@N and "distinct_<labels>".
    """
    if pass1_tag not in tags:
        raise ValueError(f"pass1_tag {pass1_tag!r} is not one of the tags {list(tags)}")
    keep = set(tags)
    rows = [r for r in _as_rows(rows) if r["tag"] in keep]
    stats = per_tag(rows)
    out = {"pass1": pass1(rows, pass1_tag)}
    for t in tags:
        if t not in stats:
            raise ValueError(f"no samples under tag {t!r}")
        s = stats[t]
        out |= {f"pass1/{t}": s.accuracy, f"length_mean/{t}": s.mean_tokens}
        out |= {f"length_median/{t}": s.median_tokens, f"n_samples/{t}": float(s.n)}
    out["tag_accuracy_min"] = min(stats[t].accuracy for t in tags)
    out["tag_accuracy_mean"] = float(np.mean([stats[t].accuracy for t in tags]))
    vote_rows, vote_tags = parallel_groups(rows, tags, group_size)
    out["cons_native"] = cons_native(vote_rows, vote_tags)
    table = pass_at_k_table(rows, ks)
    for k in ks:
        out[f"pass@{k}"] = table.values[k]
        out[f"cons@{k}"] = cons_at_k(vote_rows, vote_tags, k)
    out |= {"n_samples": float(table.n), "n_questions": float(table.n_questions)}
    for label in LABEL_KEYS:  # known-modes strategies; teachers attributed to samples
        out |= label_metrics(rows, tags, label, group_size=group_size)
    if cons_k is not None:
        reused = cons_k in ks  # Cons@k of that k is in out already
        out["cons_k"] = out[f"cons@{cons_k}"] if reused else cons_at_k(vote_rows, vote_tags, cons_k)
    return out
