"""Padding-free micro-batches: several sequences per row, attention kept inside each sequence.

A micro-batch of variable-length sequences, right-padded, wastes ``B * max_len - sum(len)``
token slots, each one costing a full forward and backward. Packing places the sequences
first-fit-decreasing into rows no wider than the longest one, so rows (and the attention
each costs) never grow, and only the rows' tails are padding::

    padded (4 rows x 9)              packed (2 rows x 9)
    a a a a a a a a a                a a a a a a a a a        positions 0..8
    b b b . . . . . .                c c c c c b b b .        0..4 | 0..2 | 0
    c c c c c . . . .                d d d d . . . . .        0..3 | 0..4 (padding)
    d d d d . . . . .

Each sequence's ``position_ids`` restart at 0 (rotary positions as if alone), and so do the
padding's: the row has no attention mask, and transformers' mask builder
(``masking_utils.find_packed_sequence_indices``: a new sequence wherever the position does
not grow by one) makes attention block-diagonal causal. The first label of each sequence is
ignored (in a padded row it is never scored either: nothing precedes it), so every token's
NLL, every sequence's sum and the gradients equal the padded batch's up to float rounding
(``tests/test_packing.py``). Rows hold the sequences in a fixed order (lengths descending,
ties by index), so a rerun packs identically on any worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ssft.method.sequences import IGNORE_INDEX, PaddedBatch


@dataclass
class PackedBatch:
    """A packed ``batch`` (no attention mask, ``position_ids`` set) and where each token is from.

    ``segments`` [R, W]: index of the input sequence each token belongs to, -1 on padding.
    """

    batch: PaddedBatch
    segments: torch.Tensor
    num_sequences: int

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            self.batch.to(device), self.segments.to(device, non_blocking=True), self.num_sequences
        )


def pack_rows(lengths: Sequence[int], capacity: int | None = None) -> list[list[int]]:
    """Sequence indices per row: first-fit decreasing into rows of ``capacity`` tokens.

    ``capacity`` defaults to the longest length (no row is wider than the padded batch's).
    """
    if not lengths:
        raise ValueError("pack_rows needs at least one sequence")
    capacity = max(lengths) if capacity is None else capacity
    if max(lengths) > capacity:
        raise ValueError(f"a {max(lengths)}-token sequence does not fit a {capacity}-token row")
    rows: list[list[int]] = []
    room: list[int] = []
    for k in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        row = next((r for r, free in enumerate(room) if free >= lengths[k]), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(k)
        room[row] -= lengths[k]
    return rows


def pack_batch(
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    capacity: int | None = None,
) -> PackedBatch:
    """Pack ``(input_ids, labels)`` pairs into rows (see the module diagram)."""
    rows = pack_rows([len(ids) for ids, _ in sequences], capacity)
    fills = [sum(len(sequences[k][0]) for k in row) for row in rows]
    width = max(fills)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    segments = torch.full((len(rows), width), -1, dtype=torch.long)
    # Padding restarts at 0 too: it is a sequence of its own, which no real token attends to.
    positions = torch.arange(width).repeat(len(rows), 1) - torch.tensor(fills)[:, None]
    for r, row in enumerate(rows):
        start = 0
        for k in row:
            ids, labs = sequences[k]
            assert len(ids) == len(labs), f"sequence {k}: {len(ids)} ids but {len(labs)} labels"
            end = start + len(ids)
            input_ids[r, start:end] = torch.tensor(ids, dtype=torch.long)
            labels[r, start + 1 : end] = torch.tensor(labs[1:], dtype=torch.long)
            segments[r, start:end] = k
            positions[r, start:end] = torch.arange(len(ids))
            start = end
    batch = PaddedBatch(input_ids, None, labels, position_ids=positions)
    return PackedBatch(batch, segments, len(sequences))
