"""Datasets and their split into hospitals.

Bundled real medical data that works offline (scikit-learn ships it):

* ``load_breast_cancer_data``: Wisconsin diagnostic breast cancer, 569 x 30,
  binary (1 = benign), the default task;
* ``load_diabetes_data``: diabetes progression, 442 x 10, regression.

``parse_csv`` reads a hospital's own data from CSV *text* (the node reads the
file; ``fl`` never touches disk).  ``Standardizer`` is fitted on a hospital's
own training rows.  Partitions return one index array per hospital:
IID, label skew (Dirichlet alpha), quantity skew (Dirichlet sizes) and by a
site column.  Every random choice takes a ``np.random.Generator``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]
CSV_ROWS_MAX = 1_000_000
CSV_COLUMNS_MAX = 10_000
CLIENTS_MAX = 1000
STD_FLOOR = 1e-12


class DataError(ValueError):
    """Malformed data: bad CSV, missing column, non-numeric or non-finite value."""


@dataclass(frozen=True)
class Dataset:
    x: FloatArray
    y: npt.NDArray[np.generic]  # int64 labels 0..k-1 (classification) or float64 (regression)
    feature_names: tuple[str, ...]
    task: str  # "classification" | "regression"
    n_classes: int  # 1 for regression
    sites: npt.NDArray[np.int64] | None = None

    def subset(self, idx: IndexArray) -> Dataset:
        sites = None if self.sites is None else self.sites[idx]
        return Dataset(
            self.x[idx], self.y[idx], self.feature_names, self.task, self.n_classes, sites
        )


@dataclass(frozen=True)
class Standardizer:
    mean: FloatArray
    scale: FloatArray

    @staticmethod
    def fit(x: FloatArray) -> Standardizer:
        if x.ndim != 2 or x.shape[0] == 0:
            raise DataError("cannot fit a standardizer on no rows")
        std = x.std(axis=0)
        return Standardizer(x.mean(axis=0), np.where(std > STD_FLOOR, std, 1.0))

    def apply(self, x: FloatArray) -> FloatArray:
        return np.asarray((x - self.mean) / self.scale)


def load_breast_cancer_data() -> Dataset:
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    return Dataset(
        np.asarray(raw.data, dtype=np.float64),
        np.asarray(raw.target, dtype=np.int64),
        tuple(str(n) for n in raw.feature_names),
        "classification",
        2,
    )


def load_diabetes_data() -> Dataset:
    from sklearn.datasets import load_diabetes

    raw = load_diabetes()
    return Dataset(
        np.asarray(raw.data, dtype=np.float64),
        np.asarray(raw.target, dtype=np.float64),
        tuple(str(n) for n in raw.feature_names),
        "regression",
        1,
    )


def parse_csv(
    text: str,
    label_column: str,
    feature_columns: Sequence[str] | None = None,
    site_column: str | None = None,
    task: str = "classification",
) -> Dataset:
    """Parse CSV text with a header row.  Classification labels are mapped to 0..k-1 in
    sorted order of their text; features must be finite numbers."""
    if task not in ("classification", "regression"):
        raise DataError(f"task must be classification or regression, got {task!r}")
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError("CSV is empty") from None
    if len(header) > CSV_COLUMNS_MAX or len(set(header)) != len(header):
        raise DataError("CSV header has too many or duplicate columns")
    col = {name: i for i, name in enumerate(header)}
    if label_column not in col:
        raise DataError(f"label column {label_column!r} not in header {header}")
    if site_column is not None and site_column not in col:
        raise DataError(f"site column {site_column!r} not in header")
    skip = {label_column} | ({site_column} if site_column else set())
    features = (
        list(feature_columns)
        if feature_columns is not None
        else [h for h in header if h not in skip]
    )
    missing = [f for f in features if f not in col]
    if missing or not features:
        raise DataError(f"feature columns missing from header: {missing or 'none given'}")
    rows_x: list[list[float]] = []
    labels: list[str] = []
    sites: list[str] = []
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(rows_x) >= CSV_ROWS_MAX:
            raise DataError(f"CSV has more than {CSV_ROWS_MAX} rows")
        if len(row) != len(header):
            raise DataError(f"line {line_no}: {len(row)} fields, header has {len(header)}")
        try:
            values = [float(row[col[f]]) for f in features]
        except ValueError as exc:
            raise DataError(f"line {line_no}: {exc}") from None
        if not all(math.isfinite(v) for v in values):
            raise DataError(f"line {line_no}: non-finite feature value")
        rows_x.append(values)
        labels.append(row[col[label_column]].strip())
        if site_column is not None:
            sites.append(row[col[site_column]].strip())
    if not rows_x:
        raise DataError("CSV has no data rows")
    x = np.array(rows_x, dtype=np.float64)
    if task == "classification":
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise DataError("classification needs at least two label values")
        index = {c: i for i, c in enumerate(classes)}
        y: npt.NDArray[np.generic] = np.array([index[v] for v in labels], dtype=np.int64)
        n_classes = len(classes)
    else:
        try:
            y = np.array([float(v) for v in labels], dtype=np.float64)
        except ValueError as exc:
            raise DataError(f"regression label: {exc}") from None
        if not np.all(np.isfinite(y)):
            raise DataError("non-finite regression label")
        n_classes = 1
    site_arr = None
    if site_column is not None:
        names = sorted(set(sites))
        site_arr = np.array([names.index(s) for s in sites], dtype=np.int64)
    return Dataset(x, y, tuple(features), task, n_classes, site_arr)


def split_train_test(
    ds: Dataset, test_fraction: float, rng: np.random.Generator
) -> tuple[Dataset, Dataset]:
    """Held-out test split; stratified by label for classification."""
    if not 0 < test_fraction < 1:
        raise DataError("test_fraction must be in (0, 1)")
    m = ds.x.shape[0]
    if ds.task == "classification":
        test: list[int] = []
        for c in range(ds.n_classes):
            idx = np.flatnonzero(ds.y == c)
            idx = idx[rng.permutation(idx.size)]
            test.extend(idx[: int(round(test_fraction * idx.size))].tolist())
        test_idx = np.array(sorted(test), dtype=np.int64)
    else:
        test_idx = np.sort(rng.permutation(m)[: int(round(test_fraction * m))])
    mask = np.ones(m, dtype=bool)
    mask[test_idx] = False
    return ds.subset(np.flatnonzero(mask)), ds.subset(test_idx)


def _check_clients(n_clients: int, m: int, min_size: int) -> None:
    if not 1 <= n_clients <= CLIENTS_MAX:
        raise DataError(f"n_clients must be in [1, {CLIENTS_MAX}]")
    if n_clients * min_size > m:
        raise DataError(f"{m} samples cannot give {n_clients} clients {min_size} each")


def partition_iid(m: int, n_clients: int, rng: np.random.Generator) -> list[IndexArray]:
    _check_clients(n_clients, m, 1)
    return [np.sort(p) for p in np.array_split(rng.permutation(m), n_clients)]


def partition_label_skew(
    y: npt.NDArray[np.int64],
    n_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 2,
) -> list[IndexArray]:
    """Per class, proportions over clients from Dirichlet(alpha); small alpha = strong skew.

    Redrawn (bounded) until every client has ``min_size`` samples."""
    if not alpha > 0:
        raise DataError("alpha must be > 0")
    _check_clients(n_clients, y.size, min_size)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            idx = idx[rng.permutation(idx.size)]
            props = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * idx.size).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.array(sorted(p), dtype=np.int64) for p in parts]
    raise DataError("could not draw a label-skew partition with min_size; raise alpha")


def partition_quantity_skew(
    m: int, n_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 2
) -> list[IndexArray]:
    """Client sizes from Dirichlet(alpha) (labels IID), each at least ``min_size``."""
    if not alpha > 0:
        raise DataError("alpha must be > 0")
    _check_clients(n_clients, m, min_size)
    spare = m - n_clients * min_size
    sizes = min_size + np.floor(rng.dirichlet(np.full(n_clients, alpha)) * spare).astype(np.int64)
    sizes[-1] += m - int(sizes.sum())
    order = rng.permutation(m)
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(p) for p in np.split(order, cuts)]


def partition_by_site(sites: npt.NDArray[np.int64]) -> list[IndexArray]:
    """One client per distinct site value, in ascending site order."""
    values = np.unique(sites)
    if values.size > CLIENTS_MAX:
        raise DataError("too many sites")
    return [np.flatnonzero(sites == s).astype(np.int64) for s in values]
