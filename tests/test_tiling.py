import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoq.overlay.tiling import OperandError, RowTiling, tile_rows

bit_lists = st.lists(st.integers(1, 8), min_size=1, max_size=70)
dms = st.integers(1, 20)


def tile_starts(tiling: RowTiling) -> np.ndarray:
    """First processing position of each tile."""
    return np.cumsum(tiling.tile_rows) - tiling.tile_rows


def tiles(tiling: RowTiling) -> list[tuple[np.ndarray, int]]:
    """(original row indices, tile bit-width) for each tile, in processing order."""
    return [(tiling.order[start:start + rows], int(bits))
            for start, rows, bits in zip(tile_starts(tiling), tiling.tile_rows, tiling.tile_bits)]


def weight_passes(tiling: RowTiling) -> int:
    return int(tiling.tile_bits.sum())


def brute_force_passes(bits: np.ndarray, tiling: RowTiling) -> int:
    """Passes recomputed from the rows each tile really holds."""
    return sum(int(bits[rows].max()) for rows, _ in tiles(tiling))


@settings(max_examples=150, deadline=None)
@given(bit_lists, dms)
def test_grouping_never_costs_more_passes(bits, dm):
    grouped, natural = tile_rows(bits, dm), tile_rows(bits, dm, grouped=False)
    assert weight_passes(grouped) <= weight_passes(natural)
    assert len(grouped.tile_rows) == len(natural.tile_rows) == -(-len(bits) // dm)


@settings(max_examples=150, deadline=None)
@given(bit_lists, dms, st.booleans())
def test_tiling_is_a_permutation_cut_into_dm_tiles(bits, dm, grouped):
    bits = np.array(bits)
    tiling = tile_rows(bits, dm, grouped)
    assert sorted(tiling.order.tolist()) == list(range(len(bits)))
    assert tiling.tile_rows.sum() == len(bits)
    assert (tiling.tile_rows[:-1] == dm).all() and 1 <= tiling.tile_rows[-1] <= dm
    assert weight_passes(tiling) == brute_force_passes(bits, tiling)
    assert [b for _, b in tiles(tiling)] == tiling.tile_bits.tolist()


@settings(max_examples=100, deadline=None)
@given(bit_lists, dms)
def test_grouped_tiling_is_optimal_against_exhaustive_lower_bound(bits, dm):
    """The k-th widest tile cannot be narrower than the (k*dm)-th widest row; grouped tiling meets the bound."""
    widest_first = np.sort(bits)[::-1]
    assert weight_passes(tile_rows(bits, dm)) == int(widest_first[::dm].sum())


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 8), st.integers(1, 70), dms)
def test_uniform_bits_give_identical_tilings(bits, rows, dm):
    grouped, natural = tile_rows([bits] * rows, dm), tile_rows([bits] * rows, dm, grouped=False)
    for a, b in zip(grouped, natural):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(grouped.order, np.arange(rows))


def test_grouping_example_and_stability():
    tiling = tile_rows([1, 8, 2, 8, 3, 4, 4, 1, 5], 4)
    assert tiling.order.tolist() == [1, 3, 8, 5, 6, 4, 2, 0, 7]
    assert tiling.tile_rows.tolist() == [4, 4, 1]
    assert tiling.tile_bits.tolist() == [8, 4, 1]
    assert tile_starts(tiling).tolist() == [0, 4, 8]
    assert tile_rows([1, 8, 2, 8, 3, 4, 4, 1, 5], 4, grouped=False).tile_bits.tolist() == [8, 4, 5]


@pytest.mark.parametrize(
    "bits, dm, message",
    [
        ([], 4, "non-empty"),
        ([2, 0, 3], 4, r"weight_bits\[1\] = 0 is outside"),
        ([2, 65], 4, r"weight_bits\[1\] = 65"),
        ([1.5, 2.0], 4, "integers"),
        ([2, 3], 0, "dm"),
    ],
)
def test_bad_tiling_input(bits, dm, message):
    with pytest.raises(OperandError, match=message):
        tile_rows(bits, dm)
