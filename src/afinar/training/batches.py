"""Turn prepared examples into training batches without padding to a fixed length.

The seeds padded every example to 512 tokens: for a FAQ whose examples are ~100 tokens, 80% of
the compute went into padding. Two layouts avoid that (`train.packing`):
  - length-grouped dynamic padding (default): examples are sorted by length inside shuffled
    windows, so each batch holds similar lengths and is padded only to its own longest;
  - packing: examples are concatenated into rows of up to `max_seq_len` tokens, with position
    ids restarting at 0 for each example; transformers turns restarting positions into a
    block-diagonal attention mask, so examples never see each other.
The order is a pure function of (seed, epoch), which is what lets `--resume` continue exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from afinar.chat_template import IGNORE_INDEX, Encoded

GROUP_WINDOW = 64  # batches per sorting window: large enough to group lengths, small enough to stay random


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    n_tokens: int  # real (non-padding) tokens
    n_label_tokens: int

    def model_inputs(self) -> dict[str, torch.Tensor]:
        out = {"input_ids": self.input_ids}
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            out["position_ids"] = self.position_ids
        return out


def epoch_order(encoded: list[Encoded], batch_size: int, seed: int, epoch: int, packing: bool, max_len: int) -> list[list[int]]:
    """Indices of the examples in each batch, for one epoch."""
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(encoded)))
    rng.shuffle(order)
    if packing:
        return _pack(order, encoded, max_len, batch_size)
    window = batch_size * GROUP_WINDOW
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(encoded[i].input_ids))
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _pack(order: list[int], encoded: list[Encoded], max_len: int, rows_per_batch: int) -> list[list[int]]:
    """First-fit packing into rows of max_len tokens; a batch is `rows_per_batch` rows' worth."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(order, key=lambda i: -len(encoded[i].input_ids)):
        n = len(encoded[i].input_ids)
        slot = next((r for r, free in enumerate(room) if free >= n), None)
        if slot is None:
            rows.append([i])
            room.append(max_len - n)
        else:
            rows[slot].append(i)
            room[slot] -= n
    rng = random.Random(len(order))
    rng.shuffle(rows)
    # one packed row per batch entry; the batch is a flat list with row breaks marked by -1
    batches = []
    for start in range(0, len(rows), rows_per_batch):
        flat: list[int] = []
        for row in rows[start : start + rows_per_batch]:
            flat += row + [-1]
        batches.append(flat)
    return batches


def split_micro(indices: list[int], encoded: list[Encoded], budget: int) -> list[list[int]]:
    """Split one batch into micro-batches whose padded size (count x longest) stays within budget.

    Activation memory grows with the padded tokens computed at once, while CPU throughput stops
    growing past ~1k tokens, so a budget caps memory at no cost in speed. An example longer
    than the budget gets a micro-batch of its own.
    """
    out: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in sorted(indices, key=lambda i: len(encoded[i].input_ids)):
        n = len(encoded[i].input_ids)
        if current and max(longest, n) * (len(current) + 1) > budget:
            out.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        out.append(current)
    return out


def collate(encoded: list[Encoded], indices: list[int], pad_id: int, packing: bool) -> Batch:
    """Build the tensors for one batch (padded to its longest row)."""
    rows = _rows(indices) if packing else [[i] for i in indices]
    ids, labels, positions = [], [], []
    for row in rows:
        r_ids, r_lab, r_pos = [], [], []
        for i in row:
            r_ids += encoded[i].input_ids
            r_lab += encoded[i].labels
            r_pos += list(range(len(encoded[i].input_ids)))
        ids.append(r_ids)
        labels.append(r_lab)
        positions.append(r_pos)
    width = max(len(r) for r in ids)
    n_tokens = sum(len(r) for r in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    label_t = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    pos_t = torch.zeros((len(ids), width), dtype=torch.long)
    for r, (a, b, p) in enumerate(zip(ids, labels, positions)):
        input_ids[r, : len(a)] = torch.tensor(a)
        label_t[r, : len(b)] = torch.tensor(b)
        mask[r, : len(a)] = 1
        pos_t[r, : len(p)] = torch.tensor(p)
    n_labels = int((label_t != IGNORE_INDEX).sum())
    if packing:
        # no attention_mask: restarting position ids tell transformers where each example starts
        return Batch(input_ids, label_t, None, pos_t, n_tokens, n_labels)
    return Batch(input_ids, label_t, mask if n_tokens < mask.numel() else None, None, n_tokens, n_labels)


def _rows(flat: list[int]) -> list[list[int]]:
    rows, current = [], []
    for i in flat:
        if i == -1:
            rows.append(current)
            current = []
        else:
            current.append(i)
    if current:
        rows.append(current)
    return rows
