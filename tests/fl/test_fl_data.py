"""Data: bundled sets, CSV parsing with clear errors, partitions that cover the data exactly."""

from __future__ import annotations

import numpy as np
import pytest

from fl.data import (
    DataError,
    Standardizer,
    load_breast_cancer_data,
    parse_csv,
    partition_by_site,
    partition_iid,
    partition_label_skew,
    partition_quantity_skew,
    split_train_test,
)


def _is_partition(parts: list[np.ndarray], m: int) -> bool:
    joined = np.sort(np.concatenate(parts))
    return bool(np.array_equal(joined, np.arange(m)))


def test_breast_cancer_split_is_stratified_and_disjoint() -> None:
    ds = load_breast_cancer_data()
    assert ds.x.shape == (569, 30) and ds.n_classes == 2
    train, test = split_train_test(ds, 0.2, np.random.default_rng(0))
    assert train.x.shape[0] + test.x.shape[0] == 569
    assert abs(test.y.mean() - ds.y.mean()) < 0.02


def test_partitions_cover_every_sample_once() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=300)
    assert _is_partition(partition_iid(300, 7, rng), 300)
    skew = partition_label_skew(y, 7, 0.1, rng)
    assert _is_partition(skew, 300) and min(len(p) for p in skew) >= 2
    fractions = [y[p].mean() for p in skew]
    assert max(fractions) - min(fractions) > 0.5  # alpha = 0.1 is strongly skewed
    qty = partition_quantity_skew(300, 7, 0.5, rng)
    assert _is_partition(qty, 300) and min(len(p) for p in qty) >= 2
    with pytest.raises(DataError):
        partition_iid(3, 5, rng)


def test_csv_with_site_column_and_local_standardisation() -> None:
    text = "age,bp,site,label\n50,120,A,yes\n60,130,B,no\n70,140,A,no\n"
    ds = parse_csv(text, "label", site_column="site")
    assert ds.feature_names == ("age", "bp")
    np.testing.assert_array_equal(ds.y, [1, 0, 0])
    parts = partition_by_site(ds.sites)  # type: ignore[arg-type]
    assert [p.tolist() for p in parts] == [[0, 2], [1]]
    z = Standardizer.fit(ds.x).apply(ds.x)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("a,b\n1,2\n", "label column"),
        ("a,label\n1,x\n2\n", "fields"),
        ("a,label\nfoo,x\n", "line 2"),
        ("a,label\nnan,x\n1,y\n", "non-finite"),
        ("a,label\n1,x\n2,x\n", "two label values"),
        ("a,label\n", "no data rows"),
    ],
)
def test_bad_csv_gets_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_csv(text, "label")
