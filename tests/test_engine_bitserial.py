import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoq.overlay import bitserial
from autoq.overlay.bitserial import (
    OperandError,
    bitserial_matmul,
    pack_bitplanes,
    popcount,
    padded_words,
    popcount_lookup,
    unpack_bitplanes,
    value_range,
)


def random_weights(rng: np.random.Generator, bits: np.ndarray, k: int) -> np.ndarray:
    """Signed values over each row's full range; 1-bit rows are binary {-1, +1}."""
    low, high = value_range(bits, signed=True)
    values = rng.integers(low[:, None], high[:, None] + 1, size=(len(bits), k))
    return np.where((bits[:, None] == 1) & (values == 0), 1, values)


matmul_cases = st.fixed_dictionaries(
    {
        "m": st.integers(1, 12),
        "k": st.integers(1, 150),
        "n": st.integers(1, 10),
        "act_bits": st.integers(1, 8),
        "dk": st.sampled_from([1, 8, 32, 64, 128]),
        "seed": st.integers(0, 2**32 - 1),
    }
)


@settings(max_examples=120, deadline=None)
@given(matmul_cases, st.lists(st.integers(1, 8), min_size=12, max_size=12))
def test_bitserial_matmul_equals_integer_matmul(case, bit_pool):
    rng = np.random.default_rng(case["seed"])
    bits = np.array(bit_pool[: case["m"]])
    w = random_weights(rng, bits, case["k"])
    a = rng.integers(0, 2 ** case["act_bits"], size=(case["k"], case["n"]))
    out = bitserial_matmul(w, bits, a, case["act_bits"], dk=case["dk"])
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, np.einsum("mk,kn->mn", w, a))


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 9), st.integers(1, 200), st.booleans(), st.integers(1, 16), st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(rows, k, signed, max_bits, seed):
    rng = np.random.default_rng(seed)
    bits = rng.integers(1, max_bits + 1, size=rows)
    if signed:
        values = random_weights(rng, bits, k)
    else:
        values = rng.integers(0, (1 << bits)[:, None], size=(rows, k))
    dk = int(rng.choice([1, 16, 64, 256]))
    planes = pack_bitplanes(values, bits, signed, dk=dk)
    assert planes.words.dtype == np.uint64
    assert planes.words.shape == (rows, bits.max(), -(-(-(-k // dk) * dk) // 64))
    np.testing.assert_array_equal(unpack_bitplanes(planes), values)


def test_extreme_values_and_binary_convention():
    w = np.array([[-128, 127, -1, 0], [-1, 1, 1, -1], [-2, 1, 0, -1]])
    bits = np.array([8, 1, 2])
    a = np.array([[255, 0], [255, 1], [3, 255], [0, 255]])
    np.testing.assert_array_equal(bitserial_matmul(w, bits, a, 8), w @ a)
    planes = pack_bitplanes(w[1:2], 1, signed=True)
    assert planes.words[0, 0, 0] == 0b0110, "binary +1 is stored as bit 1, -1 as bit 0"


def test_wrong_msb_sign_breaks_equality(monkeypatch):
    """A deliberately wrong (positive) MSB plane weight must make the product differ: the property can fail."""
    rng = np.random.default_rng(1)
    bits = np.array([4, 3, 8, 2])
    w = random_weights(rng, bits, 40)
    w[:, 0] = -(1 << (bits - 1))  # every row uses its MSB
    a = rng.integers(1, 16, size=(40, 5))
    np.testing.assert_array_equal(bitserial_matmul(w, bits, a, 4), w @ a)
    original = bitserial.plane_encoding

    def positive_msb(row_bits, signed, planes=None):
        weights, offsets = original(row_bits, signed, planes)
        return np.abs(weights), offsets

    monkeypatch.setattr(bitserial, "plane_encoding", positive_msb)
    assert not np.array_equal(bitserial_matmul(w, bits, a, 4), w @ a)


def test_padded_words():
    assert [padded_words(k, dk) for k, dk in [(1, 256), (256, 256), (257, 256), (65, 8), (64, 64), (9, 1)]] == [4, 4, 8, 2, 1, 1]
    with pytest.raises(OperandError, match="no columns"):
        pack_bitplanes(np.zeros((2, 0), dtype=int), 2, signed=False)


def test_popcount_paths_agree():
    rng = np.random.default_rng(2)
    words = rng.integers(0, 2**63, size=(7, 3, 5), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    words[0, 0, 0] = np.uint64(2**64 - 1)
    expected = np.vectorize(lambda x: bin(int(x)).count("1"))(words)
    np.testing.assert_array_equal(popcount_lookup(words), expected)
    np.testing.assert_array_equal(popcount(words), expected)


def test_old_numpy_without_bitwise_count(monkeypatch):
    """Boards may carry numpy < 2: the byte lookup table stands in for ``np.bitwise_count``."""
    rng = np.random.default_rng(3)
    bits = rng.integers(1, 9, size=6)
    w, a = random_weights(rng, bits, 100), rng.integers(0, 8, size=(100, 4))
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    np.testing.assert_array_equal(bitserial_matmul(w, bits, a, 3), w @ a)


@pytest.mark.parametrize(
    "w, bits, a, act_bits, message",
    [
        ([[8, 0]], [4], [[1], [1]], 2, r"weights\[0, 0\] = 8 does not fit row 0's 4-bit signed range \[-8, 7\]"),
        ([[1, -9]], [4], [[1], [1]], 2, r"weights\[0, 1\] = -9"),
        ([[1, 0]], [1], [[1], [1]], 2, r"weights\[0, 1\] = 0 .* \{-1, \+1\} \(binary\)"),
        ([[1, 1]], [2], [[4], [1]], 2, r"activations.T\[0, 0\] = 4 .* unsigned range \[0, 3\]"),
        ([[1, 1]], [2], [[-1], [1]], 2, r"activations.T\[0, 0\] = -1"),
        ([[1, 1]], [0], [[1], [1]], 2, r"bits\[0\] = 0 is outside"),
        ([[1, 1]], [2, 2], [[1], [1]], 2, "2 bit-widths for 1 rows"),
        ([[1, 1]], [2], [[1], [1]], 17, r"bits\[0\] = 17 is outside \[1, 16\]"),
        ([[1.0, 1]], [2], [[1], [1]], 2, "integers"),
        ([[1, 1, 1]], [2], [[1], [1]], 2, r"weights \(1, 2, 1\) \(K=3\) and activations \(1, 2, 1\) \(K=2\) do not match"),
        ([1, 1], [2], [[1], [1]], 2, "2-D"),
    ],
)
def test_bad_operands_name_the_problem(w, bits, a, act_bits, message):
    with pytest.raises(OperandError, match=message):
        bitserial_matmul(np.array(w), bits, np.array(a), act_bits)
