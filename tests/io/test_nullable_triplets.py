"""Triplets in an object array, as a DataFrame of pandas' nullable Int64 columns gives them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dimalign.io.triplets import validate_triplets

TRIPLETS = np.array([[0, 1, 2], [3, 1, 0], [2, 3, 1]])


def test_nullable_int_dataframe_accepted():
    frame = pd.DataFrame(TRIPLETS, columns=["i", "j", "k"]).astype("Int64")
    assert np.asarray(frame).dtype == object

    array = validate_triplets(frame, 4)

    assert array.dtype == np.int64
    np.testing.assert_array_equal(array, TRIPLETS)


@pytest.mark.parametrize(("value", "shown"), [(pd.NA, "<NA>"), (None, "None"), (True, "True"), (1.0, "1.0"), ("2", "'2'")])
def test_object_triplet_value_named(value, shown):
    objects = TRIPLETS.astype(object)
    objects[1, 2] = value

    with pytest.raises(ValueError, match=(
        rf"^triplets, row 1, column 2: value {shown} is not an integer object index "
        r"\(1 such value in all\): pass whole numbers, and drop the rows with missing values "
        r"first \(DataFrame\.dropna\(\)\)$"
    )):
        validate_triplets(objects, 4)


def test_object_triplet_values_counted():
    objects = TRIPLETS.astype(object)
    objects[0, 1] = pd.NA
    objects[2, 0] = pd.NA

    with pytest.raises(ValueError, match=r"^triplets, row 0, column 1: value <NA> .* \(2 such values in all\): "):
        validate_triplets(objects, 4)


def test_object_triplet_beyond_int64_rejected():
    objects = TRIPLETS.astype(object)
    objects[0, 0] = 2**70

    with pytest.raises(ValueError, match=(
        rf"^triplets, row 0, column 0: object index {2**70} is beyond the int64 range, so it is no row of "
        r"an object table: check that the column contains object indices$"
    )):
        validate_triplets(objects, 4)


def test_object_triplets_of_mixed_integer_types_accepted():
    objects = TRIPLETS.astype(object)
    objects[0, 0] = np.int32(0)
    objects[1, 1] = np.uint8(1)

    np.testing.assert_array_equal(validate_triplets(objects, 4), TRIPLETS)


def test_object_triplet_numpy_value_beyond_int64_rejected():
    objects = TRIPLETS.astype(object)
    objects[2, 2] = np.uint64(2**63 + 5)

    with pytest.raises(ValueError, match=r"^triplets, row 2, column 2: object index 9223372036854775813 is beyond"):
        validate_triplets(objects, 4)
