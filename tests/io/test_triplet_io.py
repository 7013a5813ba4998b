"""Reading, converting, validating, summarising, splitting and writing triplet files."""

from __future__ import annotations

import itertools
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from dimalign.io.objects import ObjectTable, write_object_table
from dimalign.io.triplets import (
    find_triplet_file,
    load_triplets,
    parse_columns,
    save_triplets,
    split_triplets,
    summarize_triplets,
    unseen_objects,
    validate_triplets,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

ONE_BASED = [[1, 2, 3], [3, 4, 5], [2, 4, 5], [1, 3, 5]]
ZERO_BASED = [[0, 1, 2], [2, 3, 4], [1, 3, 4], [0, 2, 4]]


@pytest.fixture(scope="module")
def things_dir() -> Path:
    path = REPO_ROOT.parent / "shared" / "data" / "things"
    assert path.is_dir(), f"real THINGS data missing at {path}"
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def set_keys(triplets: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(sorted(row)) for row in np.asarray(triplets).tolist()}


# --------------------------------------------------------------------------- 1-based files


def test_one_based_file_fails_as_zero_based(tmp_path):
    path = write_lines(tmp_path / "judgements.txt", [" ".join(map(str, row)) for row in ONE_BASED])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 5)

    message = str(error.value)
    assert "index 5" in message
    assert str(path) in message
    assert "line 2" in message  # the first row holding a 5
    assert "one_based=True" in message
    assert "import-triplets --one-based" in message


def test_one_based_file_loads_as_zero_based(tmp_path):
    one_based = write_lines(tmp_path / "one.txt", [" ".join(map(str, row)) for row in ONE_BASED])
    zero_based = write_lines(tmp_path / "zero.txt", [" ".join(map(str, row)) for row in ZERO_BASED])

    converted = load_triplets(one_based, 5, one_based=True)

    assert converted.dtype == np.int64
    assert converted.tolist() == ZERO_BASED
    assert np.array_equal(converted, load_triplets(zero_based, 5))


def test_zero_in_one_based_load_is_rejected(tmp_path):
    path = write_lines(tmp_path / "zero.txt", ["0 1 2"])

    with pytest.raises(ValueError, match="looks 0-based"):
        load_triplets(path, 5, one_based=True)


def test_out_of_range_no_one_based_hint(tmp_path):
    path = write_lines(tmp_path / "big.txt", ["0 1 2", "0 1 7"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 5)

    assert "index 7" in str(error.value)
    assert "line 2" in str(error.value)
    assert "--one-based" not in str(error.value)


# --------------------------------------------------------------------------- layouts


def test_three_layouts_give_same_triplet(tmp_path):
    canonical = write_lines(tmp_path / "canonical.txt", ["0 1 2"])
    odd_first = write_lines(tmp_path / "odd_first.txt", ["2 0 1"])
    with_choice = write_lines(tmp_path / "choice.csv", ["1,2,3,3"])

    loaded = [
        load_triplets(canonical, 3),
        load_triplets(odd_first, 3, odd_column=0),
        load_triplets(with_choice, 3, one_based=True, choice_column=3),
    ]

    for triplets in loaded:
        assert triplets.tolist() == [[0, 1, 2]]


def test_odd_column_one_moves_middle_last(tmp_path):
    path = write_lines(tmp_path / "middle.txt", ["4 7 5", "1 0 2"])

    assert load_triplets(path, 8, odd_column=1).tolist() == [[4, 5, 7], [1, 2, 0]]


def test_choice_column_each_position(tmp_path):
    path = write_lines(tmp_path / "choices.tsv", ["5\t6\t7\t1", "5\t6\t7\t2", "5\t6\t7\t3"])

    loaded = load_triplets(path, 8, choice_column=3)

    assert loaded.tolist() == [[6, 7, 5], [5, 7, 6], [5, 6, 7]]


def test_choice_outside_one_to_three_rejected(tmp_path):
    path = write_lines(tmp_path / "choices.csv", ["0,1,2,1", "0,1,2,4"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 3, choice_column=3)

    assert "line 2" in str(error.value)
    assert "choice 4" in str(error.value)


def test_header_names_and_subject_column(tmp_path, caplog):
    path = write_lines(
        tmp_path / "trials.csv",
        [
            "subject,rt,first,second,third,choice",
            "s01,0.81,1,2,3,1",
            "s02,1.20,4,5,6,2",
        ],
    )

    with caplog.at_level(logging.INFO, logger="dimalign.io.triplets"):
        loaded = load_triplets(
            path, 6, one_based=True, columns=["first", "second", "third"], choice_column="choice"
        )

    assert loaded.tolist() == [[1, 2, 0], [3, 5, 4]]
    assert "line 1 is a header" in caplog.text
    assert "converted 1-based indices" in caplog.text


def test_columns_by_position(tmp_path):
    path = write_lines(tmp_path / "trials.tsv", ["s01\t0\t1\t2", "s02\t3\t4\t5"])

    loaded = load_triplets(path, 6, columns=parse_columns("1,2,3"))

    assert loaded.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_extra_columns_need_columns(tmp_path):
    path = write_lines(tmp_path / "trials.tsv", ["s01\t0\t1\t2"])

    with pytest.raises(ValueError, match="--columns"):
        load_triplets(path, 6)


def test_extra_columns_error_lists_header(tmp_path):
    """pandas' to_csv writes an unnamed index column first."""
    path = write_lines(tmp_path / "pandas.csv", [",i,j,k", "0,0,1,2"])

    with pytest.raises(ValueError, match=r"4 columns \(header: '', 'i', 'j', 'k'\), not 3. Choose"):
        load_triplets(path, 6)


def test_text_column_selected_is_rejected(tmp_path):
    path = write_lines(tmp_path / "trials.tsv", ["s01\t0\t1\t2"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 6, columns=[0, 1, 2])

    assert "line 1" in str(error.value)
    assert "'s01'" in str(error.value)


def test_delimiters_and_comments(tmp_path):
    comma = write_lines(tmp_path / "a.csv", ["# exported", "0, 1, 2", "", "3,4,5"])
    tab = write_lines(tmp_path / "a.tsv", ["0\t1\t2", "3\t4\t5"])
    spaces = write_lines(tmp_path / "a.txt", ["0   1 2", "3 4    5"])
    semicolon = write_lines(tmp_path / "b.txt", ["0;1;2", "3;4;5"])

    expected = [[0, 1, 2], [3, 4, 5]]
    assert load_triplets(comma, 6).tolist() == expected
    assert load_triplets(tab, 6).tolist() == expected
    assert load_triplets(spaces, 6).tolist() == expected
    assert load_triplets(semicolon, 6, delimiter=";").tolist() == expected
    assert load_triplets(tab, 6, delimiter="tab").tolist() == expected


def test_npy_int32_and_whole_floats(tmp_path):
    np.save(tmp_path / "int32.npy", np.array(ZERO_BASED, dtype=np.int32))
    np.save(tmp_path / "float.npy", np.array(ZERO_BASED, dtype=np.float64))

    assert load_triplets(tmp_path / "int32.npy", 5).tolist() == ZERO_BASED
    assert load_triplets(tmp_path / "float.npy", 5).tolist() == ZERO_BASED


# --------------------------------------------------------------------------- validation


def test_non_integer_text_value_names_line(tmp_path):
    path = write_lines(tmp_path / "bad.txt", ["a b c", "0 1 2", "0 1 1.5"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 5)

    assert str(path) in str(error.value)
    assert "line 3" in str(error.value)
    assert "'1.5'" in str(error.value)


def test_non_integer_npy_value_names_row(tmp_path):
    np.save(tmp_path / "bad.npy", np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 1.5]]))

    with pytest.raises(ValueError) as error:
        load_triplets(tmp_path / "bad.npy", 5)

    assert "row 1" in str(error.value)
    assert "1.5" in str(error.value)


def test_negative_index_rejected(tmp_path):
    path = write_lines(tmp_path / "negative.txt", ["0 1 2", "0 -1 2"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 5)

    assert "negative object index -1" in str(error.value)
    assert "line 2" in str(error.value)


def test_repeated_object_names_row(tmp_path):
    path = write_lines(tmp_path / "repeat.txt", ["0 1 2", "# note", "3 3 4"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 5)

    assert "line 3" in str(error.value)
    assert "[3, 3, 4]" in str(error.value)


def test_unequal_columns_name_line(tmp_path):
    short = write_lines(tmp_path / "short.txt", ["0 1 2", "0 1"])
    long = write_lines(tmp_path / "long.txt", ["0 1 2 3", "# note", "0 1 2 3 4"])

    with pytest.raises(ValueError, match="line 2: 2 columns, expected 3"):
        load_triplets(short, 5)
    with pytest.raises(ValueError, match="line 3: 5 columns, expected 4"):
        load_triplets(long, 5, columns=[0, 1, 2])


def test_missing_n_objects_rejected(tmp_path):
    path = write_lines(tmp_path / "plain.txt", ["0 1 2"])

    with pytest.raises(ValueError) as error:
        load_triplets(path)

    assert "n_objects" in str(error.value)
    assert "--n-objects" in str(error.value)
    assert "--objects" in str(error.value)



@pytest.mark.parametrize(
    ("n_objects", "message"),
    [(6.5, "n_objects must be a whole number, got 6.5"),
     ("6", "n_objects must be a whole number, got '6'"),
     (True, "n_objects must be a whole number, got True")],
)
def test_fractional_or_text_n_objects_rejected(tmp_path, n_objects, message):
    """int() truncated 6.5 to 6 and read the string '6' as a number."""
    path = write_lines(tmp_path / "plain.txt", ["0 1 2"])
    with pytest.raises(ValueError, match=message):
        load_triplets(path, n_objects)


def test_whole_float_n_objects_accepted(tmp_path):
    path = write_lines(tmp_path / "plain.txt", ["0 1 2"])
    assert load_triplets(path, 6.0).tolist() == [[0, 1, 2]]

def test_object_table_sets_n_objects(tmp_path):
    path = write_lines(tmp_path / "plain.txt", ["0 1 4"])
    table = write_lines(tmp_path / "names.txt", ["a", "b", "c", "d", "e"])

    assert load_triplets(path, object_table=table).tolist() == [[0, 1, 4]]
    with pytest.raises(ValueError, match="lists 5 objects"):
        load_triplets(path, 6, object_table=table)


def test_validate_triplets_checks_shape_and_range():
    assert validate_triplets(np.array([[0, 1, 2]], dtype=np.int32), 3).dtype == np.int64
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        validate_triplets(np.zeros((2, 4), dtype=int), 5)
    with pytest.raises(ValueError, match="row 1: object index 3"):
        validate_triplets(np.array([[0, 1, 2], [0, 1, 3]]), 3, source="mine")


def test_empty_file_gives_no_rows(tmp_path):
    path = write_lines(tmp_path / "empty.txt", ["# nothing yet"])

    with pytest.warns(UserWarning, match="empty.txt contains no triplets"):
        assert load_triplets(path, 5).shape == (0, 3)


# --------------------------------------------------------------------------- folders


def test_folder_with_one_candidate_loads(tmp_path):
    save_triplets(np.array(ZERO_BASED), tmp_path / "train.npy")
    save_triplets(np.array(ZERO_BASED[:1]), tmp_path / "val.npy")
    write_object_table(ObjectTable.from_ids(list("abcde")), tmp_path / "objects.tsv")

    assert find_triplet_file(tmp_path) == tmp_path / "train.npy"
    assert load_triplets(tmp_path).tolist() == ZERO_BASED


def test_folder_load_log_names_candidate_kind(tmp_path, caplog):
    save_triplets(np.array(ZERO_BASED), tmp_path / "train.npy")
    save_triplets(np.array(ZERO_BASED[:1]), tmp_path / "val.npy")

    with caplog.at_level(logging.INFO, logger="dimalign.io.triplets"):
        find_triplet_file(tmp_path)

    # val.npy lies next to train.npy, so train.npy is not the folder's one triplet file.
    assert f"loading train.npy from {tmp_path}, its only train* or triplets.* file" in caplog.text


def test_folder_table_disagreeing_with_n_objects_fails(tmp_path):
    save_triplets(np.array(ZERO_BASED), tmp_path / "train.npy")
    write_object_table(ObjectTable.from_ids(list("abcde")), tmp_path / "objects.tsv")

    assert load_triplets(tmp_path, 5).tolist() == ZERO_BASED
    with pytest.raises(ValueError, match=f"n_objects is 7 but {tmp_path / 'objects.tsv'} lists 5 objects"):
        load_triplets(tmp_path, 7)


def test_folder_with_two_candidates_lists_both(tmp_path):
    save_triplets(np.array(ZERO_BASED), tmp_path / "train.npy")
    save_triplets(np.array(ZERO_BASED), tmp_path / "triplets.txt")

    with pytest.raises(ValueError) as error:
        load_triplets(tmp_path, 5)

    assert "train.npy" in str(error.value)
    assert "triplets.txt" in str(error.value)


def test_folder_without_candidate_not_found(tmp_path):
    save_triplets(np.array(ZERO_BASED), tmp_path / "val.npy")

    with pytest.raises(FileNotFoundError, match="train"):
        load_triplets(tmp_path, 5)


def test_extract_folder_named_as_features(tmp_path):
    from dimalign.io.files import write_manifest

    np.save(tmp_path / "features.npy", np.zeros((5, 4), dtype=np.float32))
    write_manifest(tmp_path, step="extract", settings={"model": "vgg16"})

    with pytest.raises(FileNotFoundError) as raised:
        find_triplet_file(tmp_path)

    assert str(raised.value) == (
        f"no triplet file in {tmp_path}: it was written by 'dimalign extract' and contains DNN features, "
        f"not triplets. Simulate triplets from them with 'dimalign simulate {tmp_path} -o FOLDER' and pass "
        "FOLDER instead"
    )


def test_fit_folder_named_as_run(tmp_path):
    from dimalign.io.files import write_manifest

    write_manifest(tmp_path, step="fit")

    with pytest.raises(FileNotFoundError) as raised:
        find_triplet_file(tmp_path)

    assert str(raised.value) == (
        f"no triplet file in {tmp_path}: it was written by 'dimalign fit' and contains no triplets. Pass a "
        "triplet file, or a folder written by 'dimalign simulate' or 'dimalign import-triplets', instead"
    )


# --------------------------------------------------------------------------- summaries


def test_summary_counts_hand_made():
    triplets = np.array([[0, 1, 2], [1, 0, 2], [0, 2, 1], [3, 4, 5]])

    summary = summarize_triplets(triplets, 7)

    assert summary.n_triplets == 4
    assert summary.n_unique_sets == 2
    assert summary.n_duplicates == 1  # [1, 0, 2] repeats [0, 1, 2]
    assert summary.n_conflicting_sets == 1  # {0, 1, 2}: odd one 2 and odd one 1
    assert summary.unseen_objects == [6]
    assert (summary.min_count, summary.median_count, summary.max_count) == (0, 1.0, 3)
    assert "1 objects never seen: 6" in summary.lines()[-1]


def test_unseen_test_object_no_index_error():
    train = np.array([[0, 1, 2], [2, 3, 4], [4, 0, 1]])
    test = np.array([[0, 1, 5]])

    assert unseen_objects(train, test) == [5]
    assert unseen_objects(train, test, n_objects=6) == [5]
    assert summarize_triplets(train, 6).unseen_objects == [5]


@pytest.mark.parametrize(
    ("test", "message"),
    [([[0, 1, -1]], "test triplets, row 0: negative object index -1"),
     ([[0, 1, 2.7]], "test triplets, row 0, column 2: value 2.7 is not an integer"),
     ([[0, 1, 6]], "test triplets, row 0: .*6"),
     ([[0, 1, 1]], "test triplets: a triplet needs three distinct objects")],
)
def test_unseen_objects_rejects_invalid_rows(test, message):
    """-1 would wrap to the last object and 2.7 truncate to 2 without the check."""
    with pytest.raises(ValueError, match=message):
        unseen_objects([[0, 1, 2]], test, n_objects=6)


# --------------------------------------------------------------------------- splitting


def test_split_sizes_and_disjoint_sets():
    rng = np.random.default_rng(3)
    all_sets = np.array(list(itertools.combinations(range(20), 3)))  # 1140 sets
    triplets = rng.permuted(rng.permutation(all_sets)[:1000], axis=1)
    # Every set occurs once, so the sizes are exact.

    train, val = split_triplets(triplets, 0.1, random_state=0)

    assert (len(train), len(val)) == (900, 100)
    assert not set_keys(train) & set_keys(val)
    assert sorted(map(tuple, np.concatenate([train, val]).tolist())) == sorted(
        map(tuple, triplets.tolist())
    )


def test_split_keeps_repeats_together():
    base = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [1, 3, 5], [2, 4, 6]] * 4)
    base[::2] = base[::2][:, [1, 0, 2]]  # same sets written in another order
    triplets = np.concatenate([base, np.array([[2, 1, 0], [8, 6, 7]])])

    for seed in range(10):
        train, val = split_triplets(triplets, 0.3, random_state=seed)
        assert not set_keys(train) & set_keys(val)
        assert len(train) + len(val) == len(triplets)


def test_split_of_one_repeated_set_names_the_cause():
    """No fraction can split one object set, so the error must not suggest a smaller one."""
    triplets = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0]] * 4)

    with pytest.raises(ValueError) as error:
        split_triplets(triplets, 0.1)

    assert "all 12 triplets judge the same object set {0, 1, 2}" in str(error.value)
    assert "smaller fraction" not in str(error.value)


def test_split_repeats_all_land_in_one_part():
    """A set judged 9 times goes to one side whole, whatever the seed."""
    triplets = np.array([[0, 1, 2]] * 9 + [[1, 2, 3], [2, 3, 4], [3, 4, 5]])

    sides = set()
    for seed in range(20):
        with warnings.catch_warnings():
            # Seeds that move the repeated set hold out 9 of 12 rows, and warn so.
            warnings.simplefilter("ignore", UserWarning)
            train, val = split_triplets(triplets, 0.25, random_state=seed)
        in_val = int((np.sort(val, axis=1) == [0, 1, 2]).all(axis=1).sum())
        in_train = int((np.sort(train, axis=1) == [0, 1, 2]).all(axis=1).sum())
        assert (in_train, in_val) in {(9, 0), (0, 9)}
        assert len(val) >= 3
        sides.add(in_val)
    assert sides == {0, 9}


def test_split_far_above_fraction_warns():
    """One set judged 9 times in 10 rows makes a 10% split hold out 90%."""
    triplets = np.array([[0, 1, 2]] * 9 + [[1, 2, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        seed = next(
            seed for seed in range(20)
            if len(split_triplets(triplets, 0.1, random_state=seed)[1]) == 9
        )

    with pytest.warns(UserWarning, match=r"contains 9 of 10 triplets \(90%\) instead of about 1"):
        split_triplets(triplets, 0.1, random_state=seed)


def test_split_same_seed_same_result():
    triplets = np.array([[i, i + 1, i + 2] for i in range(50)])

    first = split_triplets(triplets, 0.2, random_state=7)
    second = split_triplets(triplets, 0.2, random_state=7)
    other = split_triplets(triplets, 0.2, random_state=8)

    assert np.array_equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert not np.array_equal(first[1], other[1])


def test_split_rejects_invalid_rows():
    with pytest.raises(ValueError, match="triplets to split, row 0: negative object index -1"):
        split_triplets(np.array([[0, 1, -1], [2, 3, 4]] * 5), 0.2)


def test_split_fraction_outside_range_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        split_triplets(np.array(ZERO_BASED), 1.0)


@pytest.mark.parametrize(
    ("fraction", "sizes"),
    [(0.0, (10, 0)), (0.05, (10, 0)), (0.06, (9, 1)), (0.5, (5, 5)), (0.94, (1, 9))],
)
def test_split_fraction_edges_round_to_rows(fraction, sizes):
    """round(0.05 x 10) = 0 holds out nothing; 0.94 x 10 leaves one training row."""
    triplets = np.array([[index, index + 1, index + 2] for index in range(10)])

    train, val = split_triplets(triplets, fraction, random_state=0)

    assert (len(train), len(val)) == sizes


@pytest.mark.parametrize("fraction", [float("nan"), -0.1, float("inf"), 1.0])
def test_split_fraction_outside_unit_interval_rejected(fraction):
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        split_triplets(np.array(ZERO_BASED), fraction)


@pytest.mark.parametrize("fraction", ["0.1", None, True, [0.1]])
def test_split_fraction_not_a_number_rejected(fraction):
    """A string from a config file or widget gets a ValueError that names it, not a TypeError."""
    with pytest.raises(ValueError, match=rf"^val_fraction must be a number in \[0, 1\), got {re.escape(repr(fraction))}$"):
        split_triplets(np.array(ZERO_BASED), fraction)


@pytest.mark.parametrize("fraction", [0.95, 0.99])
def test_split_of_all_rows_leaves_no_training_rows(fraction):
    triplets = np.array([[index, index + 1, index + 2] for index in range(10)])

    with pytest.raises(ValueError, match="leaves no training triplets"):
        split_triplets(triplets, fraction)


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize("suffix", [".npy", ".txt", ".tsv", ".csv"])
def test_save_load_round_trip(tmp_path, suffix):
    triplets = np.array(ZERO_BASED)

    path = save_triplets(triplets, tmp_path / f"out{suffix}")

    assert load_triplets(path, 5).tolist() == ZERO_BASED
    assert [entry.name for entry in tmp_path.iterdir()] == [f"out{suffix}"]


def test_save_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="unsupported"):
        save_triplets(np.array(ZERO_BASED), tmp_path / "out.json")
    assert list(tmp_path.iterdir()) == []


def test_save_accepts_whole_floats(tmp_path):
    """np.loadtxt returns floats, which fit and split_triplets accept when every value is whole."""
    triplets = np.array(ZERO_BASED, dtype=np.float64)

    path = save_triplets(triplets, tmp_path / "out.npy")

    saved = np.load(path)
    assert saved.dtype == np.int64
    assert saved.tolist() == ZERO_BASED


def test_save_rejects_fractional_floats(tmp_path):
    triplets = np.array([[0.0, 1.0, 2.0], [0.0, 1.5, 2.0]])
    with pytest.raises(ValueError, match=r"out.npy, row 1, column 1: value 1.5 is not an integer object index"):
        save_triplets(triplets, tmp_path / "out.npy")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("triplets", "message"),
    [([[0, 1, 2], [0, -1, 2]], r"out.npy, row 1: negative object index -1"),
     ([[0, 0, 2]], r"out.npy: a triplet needs three distinct objects, but 1 of 1 rows repeat an object")],
)
def test_save_rejects_triplets_that_load_would_reject(tmp_path, triplets, message):
    """save_triplets must not write a file that load_triplets cannot read back."""
    with pytest.raises(ValueError, match=message):
        save_triplets(np.array(triplets), tmp_path / "out.npy")
    assert list(tmp_path.iterdir()) == []

# --------------------------------------------------------------------------- real data


def test_real_human_triplets_all_valid(things_dir):
    triplets = load_triplets(
        things_dir / "human_triplets.txt", object_table=things_dir / "unique_id.txt"
    )

    assert triplets.shape == (131_552, 3)
    assert triplets.min() == 0
    assert triplets.max() == 1853
    summary = summarize_triplets(triplets, 1854)
    assert summary.unseen_objects == []
    assert summary.n_triplets == 131_552


def test_non_utf8_file_names_file(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"\xff\xfe0 1 2\n")

    with pytest.raises(ValueError) as error:
        load_triplets(path, 3)

    assert str(path) in str(error.value)
    assert "not UTF-8" in str(error.value)


def test_semicolon_file_suggests_delimiter(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("a;b;c\n0;1;2\n1;2;3\n", encoding="utf-8")

    with pytest.raises(ValueError, match="--delimiter ';'"):
        load_triplets(path, 4, columns=["a", "b", "c"])
    with pytest.raises(ValueError, match="--delimiter ';'"):
        load_triplets(path, 4)
    assert load_triplets(path, 4, columns=["a", "b", "c"], delimiter=";").tolist() == [
        [0, 1, 2], [1, 2, 3]
    ]


def test_bad_first_row_not_header(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("0,1,NA\n3,4,5\n6,7,8\n")
    with pytest.raises(ValueError, match=r"line 1, column 2: value 'NA' is not an integer"):
        load_triplets(path, 10)
    path.write_text("1,2,3,x\n4,5,6,2\n")
    with pytest.raises(ValueError, match=r"line 1, column 3: value 'x'"):
        load_triplets(path, 10, one_based=True, choice_column=3)


def test_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf0,1,2\n3,4,5\n")
    assert load_triplets(path, 10).tolist() == [[0, 1, 2], [3, 4, 5]]
    path.write_bytes(b"\xef\xbb\xbfi,j,k\n1,2,3\n")
    assert load_triplets(path, 10, columns=["i", "j", "k"]).tolist() == [[1, 2, 3]]


def test_values_beyond_int64_are_errors(tmp_path):
    (tmp_path / "big.txt").write_text("0 1 2\n3 4 99999999999999999999\n")
    with pytest.raises(ValueError, match=r"line 2, column 2: value '99999999999999999999' is not an integer"):
        load_triplets(tmp_path / "big.txt", 20)
    (tmp_path / "underscore.txt").write_text("0 1 2\n3 4 1_0\n")
    with pytest.raises(ValueError, match=r"value '1_0' is not an integer"):
        load_triplets(tmp_path / "underscore.txt", 20)
    np.save(tmp_path / "big.npy", np.array([[0, 1, 2], [3, 4, 2**63 + 5]], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"row 1, column 2: value 9223372036854775813 is far beyond"):
        load_triplets(tmp_path / "big.npy", 20)
    np.save(tmp_path / "float.npy", np.array([[0, 1, 2], [3, 4, 1e20]]))
    with pytest.raises(ValueError, match=r"row 1, column 2: value 1e\+20 is not an integer object index"):
        load_triplets(tmp_path / "float.npy", 20)


def test_file_without_object_zero_warns(tmp_path):
    rows = [[1, 2, 3], [3, 4, 1], [2, 4, 3], [1, 4, 2], [2, 3, 4]]
    np.save(tmp_path / "no_zero.npy", np.array(rows))
    np.save(tmp_path / "short.npy", np.array(rows[:4]))
    np.save(tmp_path / "zero.npy", np.array(rows[:4] + [[0, 1, 2]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_triplets(tmp_path / "zero.npy", 5)

    with pytest.warns(UserWarning, match=r"no_zero.npy never names object 0 in 5 triplets.*--one-based"):
        load_triplets(tmp_path / "no_zero.npy", 5)
    # Fewer triplets than objects, but every object except 0 is named.
    with pytest.warns(UserWarning, match=r"short.npy names all 4 objects from 1 to 4 in 4 triplets"):
        load_triplets(tmp_path / "short.npy", 5)


def test_inline_comment_and_object_npy(tmp_path):
    (tmp_path / "commented.txt").write_text("0 1 2  # first\n3 4 x # second\n")
    with pytest.raises(ValueError, match=r"line 2, column 2: value 'x' is not an integer"):
        load_triplets(tmp_path / "commented.txt", 20)
    np.save(tmp_path / "objects.npy", np.array([[0, 1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects.npy cannot be read as a triplet array: it contains Python objects"):
        load_triplets(tmp_path / "objects.npy", 20)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.uint64])
def test_validate_unsigned_triplets_without_object_count(dtype):
    # An initial value of -1 for np.max does not fit an unsigned dtype.
    triplets = np.array([[0, 1, 2], [2, 1, 0]], dtype=dtype)
    result = validate_triplets(triplets, None)
    assert result.dtype == np.int64
    assert result.tolist() == [[0, 1, 2], [2, 1, 0]]
    assert validate_triplets(np.zeros((0, 3), dtype=dtype), None).shape == (0, 3)


def test_validate_rejects_unsigned_index_beyond_int64():
    triplets = np.array([[0, 1, 2**63]], dtype=np.uint64)
    with pytest.raises(ValueError, match="row 0: object index 9223372036854775808 is out of range"):
        validate_triplets(triplets, None)


# --------------------------------------------------------------------------- unreadable files


def _write_npz_as_npy(path: Path) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, a=np.array([[0, 1, 2]]))


def _write_pickle_as_npy(path: Path) -> None:
    import pickle

    path.write_bytes(pickle.dumps([[0, 1, 2]]))


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (_write_npz_as_npy, r"it is a \.npz archive \(arrays: a\), not a \.npy file"),
        (lambda path: path.write_bytes(b""), r"the file is empty \(0 bytes\)"),
        (lambda path: path.write_text("0 1 2\n"), r"it is not a \.npy file, because it does not start with"),
        (_write_pickle_as_npy, r"it is not a \.npy file, because it does not start with"),
    ],
    ids=["npz", "empty", "text", "pickle"],
)
def test_unreadable_npy_names_the_problem(tmp_path, write, reason):
    path = tmp_path / "triplets.npy"
    write(path)

    with pytest.raises(ValueError, match=f"triplets.npy cannot be read as a triplet array: {reason}") as caught:
        load_triplets(path, 5)
    assert "allow_pickle" not in str(caught.value)
    assert "unsafely" not in str(caught.value)



@pytest.mark.parametrize("delimiter", ["ab", "", ";;"])
def test_delimiter_of_several_characters_fails(tmp_path, delimiter):
    path = write_lines(tmp_path / "ab.txt", ["0ab1ab2"])

    with pytest.raises(ValueError, match=f"delimiter {delimiter!r} is invalid: use one character"):
        load_triplets(path, 5, delimiter=delimiter)


def test_delimiter_names_still_work(tmp_path):
    path = write_lines(tmp_path / "t.txt", ["0;1;2", "3;4;0"])

    assert load_triplets(path, 5, delimiter=";").tolist() == [[0, 1, 2], [3, 4, 0]]
    assert load_triplets(path, 5, delimiter="semicolon").tolist() == [[0, 1, 2], [3, 4, 0]]


# --------------------------------------------------------------------------- quoted fields


def test_quoted_header_names_lose_their_quotes(tmp_path):
    """R's write.csv quotes every string, header names included."""
    path = write_lines(tmp_path / "r.csv", ['"subj","i","j","k"', '"s1",0,1,2', '"s2",3,4,0'])

    assert load_triplets(path, 5, columns=["i", "j", "k"]).tolist() == [[0, 1, 2], [3, 4, 0]]


def test_all_quoted_fields_load(tmp_path):
    path = write_lines(tmp_path / "q.csv", ['"i","j","k"', '"0","1","2"', '"3","4","0"'])
    assert load_triplets(path, 5).tolist() == [[0, 1, 2], [3, 4, 0]]

    path = write_lines(tmp_path / "q.tsv", ['"0"\t"1"\t"2"'])
    assert load_triplets(path, 5).tolist() == [[0, 1, 2]]


def test_quoted_field_with_delimiter_stays_one_field(tmp_path):
    path = write_lines(tmp_path / "q.csv", ['subject,a,b,c', '"Smith, J.",0,1,2'])

    assert load_triplets(path, 5, columns=["a", "b", "c"]).tolist() == [[0, 1, 2]]


def test_quoted_line_break_stays_in_its_field(tmp_path):
    """MTurk batch results quote free-text answers, which may span lines."""
    path = write_lines(tmp_path / "batch.csv", [
        '"WorkerId","Input.i","Input.j","Input.k","Answer.odd","Answer.comments"',
        '"A1","1","2","3","2","fine"',
        '"A2","2","3","4","1","The images were',
        'small, hard to see"',
        '"A3","1","3","4","3",""',
        '"A4","1","3","4","3","x"',
    ])

    triplets = load_triplets(path, 4, one_based=True, columns=["Input.i", "Input.j", "Input.k"],
                             choice_column="Answer.odd")

    assert triplets.tolist() == [[0, 2, 1], [2, 3, 1], [0, 2, 3], [0, 2, 3]]


def test_rows_after_quoted_line_break_name_their_lines(tmp_path):
    path = write_lines(tmp_path / "batch.csv", [
        "subject,i,j,k,comment",
        's1,0,1,2,"two',
        'lines"',
        "s2,3,4,4,",
    ])

    with pytest.raises(ValueError, match=r"batch.csv: .*\(line 4: \[3, 4, 4\]\)"):
        load_triplets(path, 5, columns=["i", "j", "k"])


def test_quote_spanning_rows_names_its_lines(tmp_path):
    """A quote missing on line 2 pairs with a stray one on line 3, joining the rows."""
    path = write_lines(tmp_path / "t.csv", ["subject,i,j,k", '"s1,0,1,2', 's2,3,4,0"', "s3,1,2,3"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 5, columns=["i", "j", "k"])

    assert "t.csv, lines 2 to 3: 1 columns, expected 4" in str(error.value)
    assert "quote that is not closed" in str(error.value)


def test_hash_inside_quotes_is_no_comment(tmp_path):
    """A '#' in a quoted answer must not cut the quote and swallow the next rows."""
    path = write_lines(tmp_path / "batch.csv", [
        "WorkerId,i,j,k,comment",
        'A1,0,1,2,"Image #3 was blurry"',
        'A2,1,2,3,ok # a comment',
        '"A#3",2,3,0,',
    ])

    assert load_triplets(path, 4, columns=["i", "j", "k"]).tolist() == [
        [0, 1, 2], [1, 2, 3], [2, 3, 0]
    ]


def test_hash_inside_quotes_of_first_line_keeps_columns(tmp_path):
    path = write_lines(tmp_path / "t.csv", ['"Smith #2, J.",0,1,2', '"Lee, K.",1,2,3'])

    assert load_triplets(path, 4, columns=[1, 2, 3]).tolist() == [[0, 1, 2], [1, 2, 3]]


def test_quote_inside_unquoted_field_is_literal(tmp_path):
    path = write_lines(tmp_path / "t.csv", ["subject,i,j,k", 'O"Brien,0,1,2 # note', "Lee,1,2,3"])

    assert load_triplets(path, 4, columns=["i", "j", "k"]).tolist() == [[0, 1, 2], [1, 2, 3]]


def test_quote_open_at_end_of_file_fails(tmp_path):
    """A last record whose quote never closes would otherwise swallow the rows below it."""
    path = write_lines(
        tmp_path / "t.csv", ["subject,i,j,k,note", 's1,0,1,2,"open', "s2,1,2,3,", "s3,2,3,0,"]
    )

    with pytest.raises(ValueError) as error:
        load_triplets(path, 4, columns=["i", "j", "k"])

    assert "t.csv, line 2: a quote opened here is not closed" in str(error.value)


def test_float16_triplets_load_without_warning(tmp_path):
    np.save(tmp_path / "half.npy", np.array([[0, 1, 2], [3, 4, 0]], dtype=np.float16))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_triplets(tmp_path / "half.npy", 5).tolist() == [[0, 1, 2], [3, 4, 0]]
        assert validate_triplets(np.array([[0, 1, 2]], dtype=np.float16), 3).tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("n_objects", [6, 2_000_000])
def test_summary_counts_match_brute_force(n_objects):
    """Counts against Python sets; 2,000,000 objects take the path without arithmetic set codes."""
    rng = np.random.default_rng(4)
    objects = rng.choice(n_objects, size=6, replace=False)
    triplets = np.array([rng.choice(objects, size=3, replace=False) for _ in range(300)])

    summary = summarize_triplets(triplets, n_objects)

    seen_judgements, odd_ones = set(), {}
    for row in triplets.tolist():
        key = frozenset(row)
        seen_judgements.add((key, row[2]))
        odd_ones.setdefault(key, set()).add(row[2])
    assert summary.n_unique_sets == len(odd_ones)
    assert summary.n_duplicates == len(triplets) - len(seen_judgements)
    assert summary.n_conflicting_sets == sum(len(odd) > 1 for odd in odd_ones.values())


@pytest.mark.parametrize(
    ("n_objects", "message"),
    [(None, "n_objects must be a whole number, got None"), (3.5, "n_objects must be a whole number, got 3.5")],
)
def test_summary_needs_a_whole_object_count(n_objects, message):
    """None failed inside numpy.bincount with 'use 0 instead of None for minlength'."""
    with pytest.raises(ValueError, match=message):
        summarize_triplets(np.array([[0, 1, 2]]), n_objects)


# ----------------------------------------------------------- spreadsheet and experiment exports


def test_excel_sep_line_sets_delimiter(tmp_path, caplog):
    """Excel reads and writes a first line ``sep=;`` that names the delimiter."""
    path = write_lines(tmp_path / "excel.csv", ["sep=;", "i;j;k", "0;1;2", "3;4;0"])

    with caplog.at_level(logging.INFO, logger="dimalign.io.triplets"):
        assert load_triplets(path, 5).tolist() == [[0, 1, 2], [3, 4, 0]]
    assert "sep=;" in caplog.text
    assert load_triplets(path, 5, delimiter=";").tolist() == [[0, 1, 2], [3, 4, 0]]
    without_header = write_lines(tmp_path / "plain.csv", ["sep=;", "0;1;2"])
    assert load_triplets(without_header, 5).tolist() == [[0, 1, 2]]


def test_excel_sep_line_contradicting_delimiter_fails(tmp_path):
    path = write_lines(tmp_path / "excel.csv", ["sep=;", "i;j;k", "0;1;2"])

    with pytest.raises(ValueError, match=r"excel.csv, line 1: 'sep=;' sets the delimiter ';'"):
        load_triplets(path, 5, delimiter=",")


def test_utf16_file_is_named_as_utf16(tmp_path):
    """Excel's "Unicode text" export is UTF-16 with a byte order mark."""
    path = tmp_path / "unicode.tsv"
    path.write_text("i\tj\tk\r\n0\t1\t2\r\n", encoding="utf-16")

    with pytest.raises(ValueError) as error:
        load_triplets(path, 3)

    assert str(path) in str(error.value)
    assert "UTF-16" in str(error.value)
    assert "save the file as UTF-8" in str(error.value)


def test_utf16_without_byte_order_mark_is_named(tmp_path):
    path = tmp_path / "unicode.tsv"
    path.write_bytes("i\tj\tk\r\n0\t1\t2\r\n".encode("utf-16-le"))

    with pytest.raises(ValueError) as error:
        load_triplets(path, 3)

    assert "unicode.tsv, line 1: contains NUL bytes" in str(error.value)
    assert "UTF-16" in str(error.value)


@pytest.mark.parametrize("missing", ["", "NA", "nan", "NaN", "N/A", "null", "None"])
def test_missing_object_value_names_column(tmp_path, missing):
    """Experiment exports leave a cell empty or write NA for a trial without an answer."""
    path = write_lines(
        tmp_path / "jspsych.csv",
        ["subject,rt,obj1,obj2,obj3", "S1,812,0,1,2", f"S1,,3,{missing},0"],
    )

    with pytest.raises(ValueError) as error:
        load_triplets(path, 5, columns=["obj1", "obj2", "obj3"])

    message = str(error.value)
    assert f"jspsych.csv, line 3, column 3: value {missing!r} is not an integer object index" in message
    assert "a missing value in the object column 'obj2'" in message
    assert "remove the rows" in message


def test_missing_choice_names_choice_column(tmp_path):
    path = write_lines(
        tmp_path / "trials.csv", ["subject,i,j,k,response", "S1,1,2,3,3", "S1,2,3,4,"]
    )

    with pytest.raises(ValueError) as error:
        load_triplets(path, 5, one_based=True, columns=["i", "j", "k"], choice_column="response")

    message = str(error.value)
    assert "trials.csv, line 3, column 4: value '' is not an integer choice" in message
    assert "a missing value in the choice column 'response'" in message


def test_choice_holding_object_ids_is_named(tmp_path):
    """Some experiments record the clicked object's id instead of its position."""
    path = write_lines(tmp_path / "trials.csv", ["i,j,k,odd", "4,5,6,6", "7,8,9,7", "1,2,3,2"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 9, one_based=True, choice_column="odd")

    message = str(error.value)
    assert "line 2: choice 6 is not 1, 2 or 3" in message
    assert "every choice is one of the row's three objects" in message


def test_zero_based_choices_are_named(tmp_path):
    """jsPsych's button responses count the buttons from 0."""
    path = write_lines(tmp_path / "trials.csv", ["i,j,k,button", "0,1,2,0", "3,4,0,2", "1,2,3,1"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 5, choice_column="button")

    message = str(error.value)
    assert "line 2: choice 0 is not 1, 2 or 3" in message
    assert "every choice is 0, 1 or 2" in message


def test_decimal_comma_is_named(tmp_path):
    """Spreadsheets in German or French locales write 2.0 as 2,0 and separate by semicolons."""
    path = write_lines(tmp_path / "excel.csv", ["sep=;", "i;j;k", "0;1;2,0"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 3)

    message = str(error.value)
    assert "line 3, column 2: value '2,0' is not an integer object index" in message
    assert "decimal comma" in message
    assert "object names" not in message


def test_object_names_in_place_of_indices_are_named(tmp_path):
    """Object names are not read, and the error requests indices instead."""
    path = write_lines(tmp_path / "names.csv", ["aardvark,abacus,acorn", "abacus,acorn,aardvark"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 4)

    message = str(error.value)
    assert "names.csv, line 1, column 0: value 'aardvark' is not an integer object index" in message
    assert "not object names" in message
    assert "row numbers" in message
    assert "header" not in message


def test_named_columns_mark_header_above_rows_without_numbers(tmp_path, caplog):
    """PsychoPy writes instruction rows with empty trial columns right below the header."""
    path = write_lines(tmp_path / "psychopy.csv", [
        "trials.thisN,obj1,obj2,obj3,key_resp.keys,participant",
        ",,,,space,p01",
        "0,1,2,3,left,p01",
    ])

    with caplog.at_level(logging.INFO, logger="dimalign.io.triplets"):
        with pytest.raises(ValueError) as error:
            load_triplets(path, 5, columns=["obj1", "obj2", "obj3"])

    assert "line 1 is a header" in caplog.text
    assert "line 2, column 1: value '' is not an integer object index" in str(error.value)
    assert "missing value in the object column 'obj1'" in str(error.value)


def test_unrecognised_header_suggests_column_names(tmp_path):
    """Numbered columns cannot mark a header above rows without numbers."""
    path = write_lines(tmp_path / "psychopy.csv", [
        "trials.thisN,obj1,obj2,obj3,key_resp.keys",
        ",,,,space",
        "0,1,2,3,left",
    ])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 5, columns=[1, 2, 3])

    message = str(error.value)
    assert "line 1, column 1: value 'obj1' is not an integer object index" in message
    assert "If this line is a header" in message
    assert "columns=['obj1', 'obj2', 'obj3']" in message


def test_named_choice_column_marks_header(tmp_path):
    path = write_lines(tmp_path / "t.csv", ["a,b,c,odd", "x,y,z,w", "0,1,2,3"])

    with pytest.raises(ValueError, match=r"line 2, column 0: value 'x'"):
        load_triplets(path, 5, choice_column="odd")


# --------------------------------------------------------------------------- trailing delimiters


def test_trailing_comma_on_every_row(tmp_path, caplog):
    """Spreadsheets and some scripts end every row with a delimiter."""
    plain = write_lines(tmp_path / "plain.csv", ["0,1,2,", "1,2,3,", "2,3,0,"])
    tabs = write_lines(tmp_path / "tabs.tsv", ["0\t1\t2\t", "1\t2\t3\t"])
    header = write_lines(tmp_path / "header.csv", ["i,j,k,", "0,1,2,", "1,2,3,"])
    choice = write_lines(tmp_path / "choice.csv", ["1,2,3,1,", "2,3,4,3,"])

    with caplog.at_level(logging.INFO, logger="dimalign.io.triplets"):
        assert load_triplets(plain, 4).tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 0]]
    assert "the final column 3 is empty on every line" in caplog.text
    assert load_triplets(tabs, 4).tolist() == [[0, 1, 2], [1, 2, 3]]
    assert load_triplets(header, 4).tolist() == [[0, 1, 2], [1, 2, 3]]
    assert load_triplets(choice, 4, one_based=True, choice_column=3).tolist() == [
        [1, 2, 0], [1, 2, 3],
    ]


def test_trailing_delimiters_skip_record_scan(tmp_path, monkeypatch):
    """A file whose every line ends with the delimiter is checked without the per-record parser."""
    from dimalign.io import triplets as triplet_io

    rows = [f"{i % 7},{(i + 1) % 7},{(i + 2) % 7}," for i in range(500)]
    plain = write_lines(tmp_path / "plain.csv", rows)
    header = write_lines(tmp_path / "header.csv", ["# exported", "i,j,k,", "", *rows])
    tabs = write_lines(tmp_path / "tabs.tsv", [row.replace(",", "\t") + " " for row in rows])
    scanned = []
    real_records = triplet_io._records

    def counted_records(handle, layout):
        scanned.append(layout.path)
        return real_records(handle, layout)

    monkeypatch.setattr(triplet_io, "_records", counted_records)
    expected = [[i % 7, (i + 1) % 7, (i + 2) % 7] for i in range(500)]
    for path in (plain, header, tabs):
        assert load_triplets(path, 7).tolist() == expected
    assert scanned == []


def test_trailing_tab_with_longer_line(tmp_path):
    """A tab at the end of a line adds no column, but a fourth value does."""
    path = write_lines(tmp_path / "t.tsv", ["0\t1\t2\t", "1\t2\t3\t0\t", "2\t3\t0\t"])

    with pytest.raises(ValueError, match=r"t.tsv, line 2: 4 columns, expected 3 like the first line"):
        load_triplets(path, 4)


def test_final_column_empty_on_some_rows(tmp_path):
    first_empty = write_lines(tmp_path / "first.csv", ["0,1,2,", "1,2,3,s2", "2,3,0,"])
    later_empty = write_lines(tmp_path / "later.csv", ["0,1,2,s1", "1,2,3,", "2,3,0,s1"])

    with pytest.raises(ValueError) as error:
        load_triplets(first_empty, 4)
    message = str(error.value)
    assert f"{first_empty}: the final column 3 is empty on line 1 but contains 's2' on line 2" in message
    assert "--columns 0,1,2" in message

    with pytest.raises(ValueError) as error:
        load_triplets(later_empty, 4)
    assert f"{later_empty}: the final column 3 is empty on line 2 but contains 's1' on line 1" in str(
        error.value
    )


def test_trailing_comma_on_header_only(tmp_path, caplog):
    path = write_lines(tmp_path / "h.csv", ["i,j,k,", "0,1,2", "1,2,3"])

    with caplog.at_level(logging.INFO, logger="dimalign.io.triplets"):
        assert load_triplets(path, 4).tolist() == [[0, 1, 2], [1, 2, 3]]
    assert f"{path}: the header ends with a delimiter and the first row does not" in caplog.text
    assert load_triplets(path, 4, columns=["i", "j", "k"]).tolist() == [[0, 1, 2], [1, 2, 3]]


def test_trailing_comma_on_rows_only(tmp_path):
    path = write_lines(tmp_path / "r.csv", ["i,j,k", "0,1,2,", "1,2,3,"])
    mixed = write_lines(tmp_path / "m.csv", ["i,j,k", "0,1,2,", "1,2,3"])
    filled = write_lines(tmp_path / "f.csv", ["i,j,k", "0,1,2,", "1,2,3,s1"])

    assert load_triplets(path, 4).tolist() == [[0, 1, 2], [1, 2, 3]]
    assert load_triplets(path, 4, columns=["i", "j", "k"]).tolist() == [[0, 1, 2], [1, 2, 3]]
    with pytest.raises(ValueError, match=r"m.csv, line 3: 3 columns, expected 4 like line 2"):
        load_triplets(mixed, 4)
    with pytest.raises(ValueError, match=r"the final column 3 is empty on line 2 but contains 's1' on line 3"):
        load_triplets(filled, 4)


def test_trailing_comma_on_some_rows_named(tmp_path):
    first_only = write_lines(tmp_path / "first.csv", ["0,1,2,", "1,2,3", "2,3,0,"])
    second_only = write_lines(tmp_path / "second.csv", ["0,1,2", "1,2,3,"])

    with pytest.raises(ValueError) as error:
        load_triplets(first_only, 4)
    assert str(error.value) == (
        f"{first_only}, line 2: 3 columns, expected 4 like the first line, because the first line "
        "ends with a comma and line 2 does not: end every line with a comma, or none"
    )
    with pytest.raises(ValueError) as error:
        load_triplets(second_only, 4)
    assert str(error.value) == (
        f"{second_only}, line 2: 4 columns, expected 3 like the first line, because line 2 ends "
        "with a comma and the first line does not: end every line with a comma, or none"
    )


def test_windows_lines_with_trailing_comma(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"i,j,k,\r\n0,1,2,\r\n1,2,3,\r\n\r\n")

    assert load_triplets(path, 4).tolist() == [[0, 1, 2], [1, 2, 3]]


@pytest.mark.parametrize("lines", [
    ["0\t1 2", "1 \t2\t3"],
    ["0 1\t2", "1 2 3"],
    ["a\tb c", "0\t1 2", "1 2\t3"],
])
def test_tabs_mixed_with_spaces_load(tmp_path, lines):
    path = write_lines(tmp_path / "t.txt", lines)

    assert load_triplets(path, 4).tolist()[-2:] == [[0, 1, 2], [1, 2, 3]]


def test_tab_column_with_spaces_kept(tmp_path):
    """A tab-separated column of names with spaces stays one column."""
    path = write_lines(tmp_path / "t.tsv", ["subject a\t0\t1\t2", "subject b\t1\t2\t3"])

    assert load_triplets(path, 4, columns=[1, 2, 3]).tolist() == [[0, 1, 2], [1, 2, 3]]


def test_extra_column_message_is_sentence(tmp_path):
    path = write_lines(tmp_path / "subjects.csv", ["0,1,2,s1", "1,2,3,s2"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 4)

    assert str(error.value) == (
        f"{path} has 4 columns, not 3. Choose the three object columns by position or header "
        "name with columns=[a, b, c] (CLI: dimalign import-triplets --columns a,b,c). If a "
        "column gives the odd one's position 1, 2 or 3, name it with choice_column "
        "(CLI: --choice-column)."
    )


# --------------------------------------------------------------------------- object 0 never named


def test_covering_file_without_zero_warns(tmp_path):
    """A 1-based file that names every object but its last one loads as 0-based."""
    np.save(tmp_path / "covering.npy", np.array([[1, 2, 3], [4, 5, 6]]))

    with pytest.warns(UserWarning) as record:
        triplets = load_triplets(tmp_path / "covering.npy", 7)

    assert triplets.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert len(record) == 1
    assert str(record[0].message) == (
        f"{tmp_path / 'covering.npy'} names all 6 objects from 1 to 6 in 2 triplets but never "
        "object 0; if it counts objects from 1, load it as 1-based "
        "(CLI: dimalign import-triplets --one-based)"
    )


def test_sparse_zero_based_files_do_not_warn(tmp_path, caplog):
    np.save(tmp_path / "with_zero.npy", np.array([[0, 1, 2], [3, 4, 5]]))
    np.save(tmp_path / "sparse.npy", np.array([[1, 2, 3], [4, 5, 6]]))
    np.save(tmp_path / "gaps.npy", np.array([[1, 2, 3], [4, 5, 7]]))

    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="dimalign.io.triplets"):
        warnings.simplefilter("error")
        load_triplets(tmp_path / "with_zero.npy", 7)
        load_triplets(tmp_path / "sparse.npy", 20)
        load_triplets(tmp_path / "gaps.npy", 8)

    assert "with_zero.npy never names object 0" not in caplog.text
    assert f"{tmp_path / 'sparse.npy'} never names object 0; it is read as 0-based" in caplog.text


def test_zero_check_with_huge_object_count(tmp_path):
    """The check must not allocate per object, because 10^12 flags would not fit into memory."""
    np.save(tmp_path / "sparse.npy", np.array([[1, 2, 3], [4, 5, 6]]))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        triplets = load_triplets(tmp_path / "sparse.npy", 10**12)

    assert triplets.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_npy_of_wrong_shape_says_fix(tmp_path):
    np.save(tmp_path / "flat.npy", np.array([0, 1, 2, 1, 2, 3]))
    np.save(tmp_path / "fields.npy", np.array([(0, 1, 2)], dtype=[("i", int), ("j", int), ("k", int)]))
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 1), dtype=int))

    with pytest.raises(ValueError) as error:
        load_triplets(tmp_path / "flat.npy", 5)
    assert str(error.value) == (
        f"{tmp_path / 'flat.npy'}: triplets must be a 2-D array, got shape (6,); save one triplet "
        "per row, as an integer array of shape (n, 3) (numpy: triplets.reshape(-1, 3))"
    )
    with pytest.raises(ValueError) as error:
        load_triplets(tmp_path / "fields.npy", 5)
    assert str(error.value) == (
        f"{tmp_path / 'fields.npy'}: triplets must be a 2-D array, got a structured array with "
        "the fields i, j, k; save one triplet per row, as an integer array of shape (n, 3) "
        "(numpy: numpy.column_stack([triplets[name] for name in triplets.dtype.names]))"
    )
    with pytest.raises(ValueError) as error:
        load_triplets(tmp_path / "cube.npy", 5)
    assert str(error.value) == (
        f"{tmp_path / 'cube.npy'}: triplets must be a 2-D array, got shape (2, 3, 1); save one "
        "triplet per row, as an integer array of shape (n, 3)"
    )


def test_trailing_comma_with_longer_line(tmp_path):
    """A line with one more empty field must not pass with the final column left out."""
    path = write_lines(tmp_path / "t.csv", ["0,1,2,", "1,2,3,,", "2,3,0,"])

    with pytest.raises(ValueError, match=r"t.csv, line 2: 5 columns, expected 4 like the first line"):
        load_triplets(path, 4)


def test_repeated_column_choice_message(tmp_path):
    path = write_lines(tmp_path / "h.csv", ["i,j,k,c", "1,2,3,1"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 5, columns=[0, 0, 1])
    assert str(error.value) == (
        f"{path}: the object columns [0, 0, 1] repeat a column; name three different columns "
        "(CLI: --columns a,b,c)"
    )
    with pytest.raises(ValueError) as error:
        load_triplets(path, 5, columns=[0, 1, 2], choice_column=2)
    assert str(error.value) == (
        f"{path}: the choice column 2 is also an object column (object columns [0, 1, 2]); "
        "name a choice column apart from the three object columns (CLI: --choice-column)"
    )


@pytest.mark.parametrize(("name", "lines", "first", "second"), [
    ("semicolons.csv", ["i,j,k", "0;1;2", "1;2;3"], "','", "';'"),
    ("commas.tsv", ["i\tj\tk", "0,1,2"], "tab", "','"),
])
def test_header_and_rows_with_other_delimiters(tmp_path, name, lines, first, second):
    path = write_lines(tmp_path / name, lines)

    with pytest.raises(ValueError) as error:
        load_triplets(path, 5)

    assert str(error.value) == (
        f"{path}: line 1 separates its fields by {first}, but line 2 by {second}. Use one "
        "delimiter in the whole file, then import it again"
    )


def test_one_column_message_has_single_period(tmp_path):
    path = write_lines(tmp_path / "semi.csv", ["i;j;k", "0;1;2"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 5)

    assert ".." not in str(error.value)
    assert "semi.csv has 1 column, not 3." in str(error.value)
    assert "pass delimiter=';' (CLI: --delimiter ';')" in str(error.value)


# --------------------------------------------------------------------------- matrices passed as triplets


def test_feature_npy_named_as_matrix(tmp_path):
    path = tmp_path / "features.npy"
    np.save(path, np.random.default_rng(0).random((20, 12)))

    with pytest.raises(ValueError) as raised:
        load_triplets(path, n_objects=20)

    message = str(raised.value)
    assert "is not an integer object index (240 such values in all)" in message
    assert (
        "Its 12 columns of many non-integer numbers look like an embedding or a feature matrix, "
        "not triplets: a triplet file has three integer object indices per row (four with a choice column)"
    ) in message


def test_embedding_text_named_as_matrix(tmp_path):
    path = tmp_path / "embedding.txt"
    rows = np.random.default_rng(0).random((5, 12))
    path.write_text("\n".join(" ".join(f"{value:.4f}" for value in row) for row in rows) + "\n", encoding="utf-8")

    with pytest.raises(ValueError) as raised:
        load_triplets(path, n_objects=5)

    message = str(raised.value)
    assert message.startswith(
        f"{path} has 12 columns, not 3. 12 columns without a header look like an embedding or a feature "
        "matrix, not triplets: a triplet file has three integer object indices per row (four with a choice "
        "column). Otherwise, choose the three object columns by position or header name"
    )


def test_few_float_columns_get_no_matrix_hint(tmp_path):
    path = tmp_path / "triplets.npy"
    np.save(path, np.array([[0.0, 1.0, 2.5]]))

    with pytest.raises(ValueError) as raised:
        load_triplets(path, n_objects=3)

    assert "embedding or a feature matrix" not in str(raised.value)


def test_triplet_link_loop_named(tmp_path):
    from dimalign.io.triplets import load_triplets

    (tmp_path / "triplets.txt").symlink_to(tmp_path / "triplets.txt")

    with pytest.raises(OSError) as error:
        load_triplets(tmp_path / "triplets.txt", n_objects=3)

    assert str(error.value) == (
        f"triplet file {tmp_path / 'triplets.txt'} cannot be opened: it is a loop of symbolic links"
    )


def test_comma_mismatch_after_comment_names_line(tmp_path):
    """The first data line is named by its number when comments or blank lines come before it."""
    path = write_lines(tmp_path / "t.csv", ["# exported", "", "0,1,2", "", "1,2,3,"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 4)
    assert str(error.value) == (
        f"{path}, line 5: 4 columns, expected 3 like line 3, because line 5 ends with a comma and "
        "line 3 does not: end every line with a comma, or none"
    )


def test_header_after_comment_named_by_line(tmp_path):
    path = write_lines(tmp_path / "t.csv", ["# exported", "i,j,k", "0,1,2", "1,2"])

    with pytest.raises(ValueError) as error:
        load_triplets(path, 4)
    assert str(error.value) == f"{path}, line 4: 2 columns, expected 3 like line 2; check the delimiter"


@pytest.mark.parametrize("lines", [
    ["0\t1\t2", "1 2 3"],
    ["0\t1\t2", "1\t2\t3", "2\t3 0", "3 0\t1"],
    ["i\tj\tk", "0\t1\t2", "1\t2\t3", "2 3 0"],
])
def test_later_space_lines_load(tmp_path, lines):
    """Lines after the first two that use spaces in a tab-separated file of numbers are read."""
    path = write_lines(tmp_path / "t.txt", lines)

    assert load_triplets(path, 4).tolist()[:2] == [[0, 1, 2], [1, 2, 3]]
    assert len(load_triplets(path, 4)) == len(lines) - lines[0].startswith("i")


def test_tab_column_with_spaces_mismatch_kept(tmp_path):
    """A tab-separated column of names with spaces keeps the tab delimiter and its column error."""
    path = write_lines(tmp_path / "t.tsv", ["subject a\t0\t1\t2", "subject b\t1\t2\t3", "0 1 2 3"])

    with pytest.raises(ValueError, match=r"line 3: 1 columns, expected 4 like the first line"):
        load_triplets(path, 4, columns=[1, 2, 3])
