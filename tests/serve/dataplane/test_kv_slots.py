"""SlotKV (the running batch's KV in row slots): joins, leaves and growth keep every row's K/V and mask exact."""

from __future__ import annotations

import torch

from leanml.serve.dataplane.kv_slots import SlotKV


def _row(length: int, seed: int, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 3, length, 4, generator=g), torch.randn(1, 3, length, 4, generator=g))
            for _ in range(layers)]


def _check(kv: SlotKV, expected: dict[int, list[tuple[torch.Tensor, torch.Tensor]]], order: list[int]) -> None:
    """Row i of the window holds row order[i]'s K/V right-aligned, its mask 1 exactly there."""
    mask = kv.mask
    assert mask.shape[0] == len(order)
    for i, rid in enumerate(order):
        n = expected[rid][0][0].shape[-2]
        assert mask[i].tolist() == [0] * (mask.shape[1] - n) + [1] * n
        for li, (k, v) in enumerate(expected[rid]):
            assert torch.equal(kv.k[li][i, :, kv.end - n : kv.end], k[0])
            assert torch.equal(kv.v[li][i, :, kv.end - n : kv.end], v[0])
    assert int(mask.sum(0).gt(0).logical_not().sum()) == 0 or len(order) == 0  # no all-padding column kept


def test_join_leave_and_growth_keep_every_row_exact():
    kv = SlotKV(2, 3, 3, 4, torch.float32, columns=8)
    rows = {0: _row(3, 0), 1: _row(6, 1)}  # the second is longer than the window: it grows to the left
    order = [kv.join(rows[0], 3), kv.join(rows[1], 6)]
    _check(kv, rows, order)
    for step in range(5):  # decode steps past the buffer's right edge: the window moves / the buffer grows
        mask = kv.step_mask(1)
        assert mask.shape == (2, kv.end - kv.start + 1) and mask[:, -1].tolist() == [1, 1]
        layer_kv = [(torch.full((2, 3, 1, 4), float(step)), torch.full((2, 3, 1, 4), -float(step))) for _ in range(2)]
        cache = kv.cache()
        for li, (k, v) in enumerate(layer_kv):
            keys, _ = cache.layers[li].update(k, v)
            assert keys.shape[-2] == kv.end - kv.start + 1
        kv.advance(1)
        for rid in (0, 1):
            rows[rid] = [(torch.cat([k, torch.full((1, 3, 1, 4), float(step))], -2),
                          torch.cat([v, torch.full((1, 3, 1, 4), -float(step))], -2)) for k, v in rows[rid]]
    assert kv.columns > 8
    _check(kv, rows, order)
    # the longer row leaves: the window's leading columns, padding in the remaining row, are dropped
    order = [order[i] for i in kv.leave([1])]
    assert kv.end - kv.start == 3 + 5
    _check(kv, rows, order)
    rows[2], rows[3] = _row(2, 2), _row(4, 3)
    assert [kv.join(rows[2], 2), kv.join(rows[3], 4)] == [1, 2]  # the next free slots
    order += [2, 3]
    _check(kv, rows, order)
    # the first of three leaves: the last row moves into its slot
    new = kv.leave([0])
    order = [order[i] for i in new]
    assert order == [3, 2]
    _check(kv, rows, order)
    kv.ensure_rows(5)
    rows[4] = _row(1, 4)
    assert kv.join(rows[4], 1) == 2
    order.append(4)
    _check(kv, rows, order)
    kv.leave([0, 1, 2])
    assert kv.b == 0 and kv.tokens_held == 0
