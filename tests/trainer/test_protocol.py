"""protocol.py: the evaluation protocol's documents, rows and batch order, and its pins on the
Gutenberg validation and test files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer import protocol

GUTENBERG = Path(__file__).resolve().parents[3] / "shared" / "data" / "gutenberg"
GUTENBERG_VAL = GUTENBERG / "val.jsonl.xz"
GUTENBERG_TEST = GUTENBERG / "heldout" / "test.jsonl.xz"


@pytest.mark.skipif(not GUTENBERG_VAL.is_file(), reason=f"{GUTENBERG_VAL} is absent")
def test_protocol_pins_gutenberg_validation():
    documents = protocol.load_documents([GUTENBERG_VAL])
    assert len(documents) == 2091
    assert sum(len(d.encode("utf-8")) for d in documents) == 11_590_992


@pytest.mark.skipif(not GUTENBERG_TEST.is_file(), reason=f"{GUTENBERG_TEST} is absent")
def test_protocol_pins_gutenberg_test_split():
    documents = protocol.load_documents(protocol.test_files(GUTENBERG_TEST.parent))
    assert len(documents) == 2105
    assert sum(len(d.encode("utf-8")) for d in documents) == 11_896_642


def test_rows_place_documents_whole_and_split_long_ones():
    bos = 0
    docs = [[0, 1, 2], [0, 3, 4, 5], [0, 6], list(range(100, 120)), [0, 9]]
    docs[3][0] = bos  # a 20-token document, longer than a row of 8
    rows = protocol.pack_rows(docs, bos, row_tokens=8)
    expected = [
        [0, 1, 2, 0, 3, 4, 5, 0],  # two documents; [0, 6] does not fit the one free slot
        [0, 6, 0, 0, 0, 0, 0, 0],  # the long document starts a row of its own
        [0, *range(101, 108)],  # long document, row k holds its tokens [7k, 7k + 8)
        list(range(107, 115)),
        [*range(114, 120), 0, 0],
        [0, 9, 0, 0, 0, 0, 0, 0],
    ]
    assert rows.tokens.tolist() == expected
    assert rows.level.tolist() == [0, 0, 0, 1, 2, 0]
    assert rows.targets_mask.tolist()[0] == [True, True, False, True, True, True, False]  # BOS, padding out
    assert rows.targets_mask.tolist()[4] == [True] * 5 + [False] * 2
    # every token after a BOS is a target exactly once
    assert rows.targets_mask.sum() == sum(len(d) - 1 for d in docs)
    targets = [
        int(t) for row, mask in zip(rows.tokens, rows.targets_mask, strict=True) for t in row[1:][mask]
    ]
    assert sorted(targets) == sorted(t for d in docs for t in d[1:])


def test_continuation_rows_come_in_later_batches_and_order_is_shuffled():
    levels = np.array([0, 0, 1, 0, 2, 1, 0, 0, 1, 0] * 5)
    batches = protocol.batch_order(levels, batch_size=4, seed=1)
    assert sorted(int(i) for b in batches for i in b) == list(range(len(levels)))
    batch_levels = [set(levels[b].tolist()) for b in batches]
    assert all(len(s) == 1 for s in batch_levels)  # a batch never mixes levels
    assert [s.pop() for s in batch_levels] == sorted(levels[b][0] for b in batches)  # levels in order
    other = protocol.batch_order(levels, batch_size=4, seed=2)
    assert [b.tolist() for b in batches] != [b.tolist() for b in other]
    assert [b.tolist() for b in batches] == [b.tolist() for b in protocol.batch_order(levels, 4, seed=1)]
