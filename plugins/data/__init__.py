"""Data plugins: in-memory tables, seeded splits and a fast tensor loader.

A data factory returns a :class:`Table` (every row in memory as numpy arrays). :func:`prepare` splits
it (test first, then validation from the rest, stratified for classification), fits the scaling on
the training split only and returns torch tensors with a :class:`DataInfo` that models and metrics
are built from. :class:`TensorLoader` batches in-memory tensors by slicing a permutation, which is
much cheaper than torch's ``DataLoader`` (per-sample indexing and collation) for small data sets::

    >>> from retort import plugins
    >>> from retort.plugins.data import prepare
    >>> splits = prepare(plugins.build("data", "digits"), val_fraction=0.2, test_fraction=0.2, seed=0)
    >>> splits.info.n_train, splits.info.n_val, splits.info.n_test
    (1077, 360, 360)

A data factory may instead return torch ``Dataset``s (:class:`DataSets`, or one ``Dataset`` that retort
splits by seeded index: :func:`split_datasets`); those are served through torch's ``DataLoader``.

One module per question: ``tables`` (what a table is; the built-in tables), ``files`` (CSV, NPZ), ``splits``
(seeded splits and scaling of tables), ``loader`` (batches of in-memory tensors), ``datasets`` (data sets
that are not tables), ``serve`` (their DataLoaders: order, shards, resume), ``arrays`` (``.npy`` rows read on
demand: data larger than memory), ``images`` (image folders), ``shapes`` (a generated image folder), ``text``
(byte-level language modelling). Importing this package registers every built-in data plugin.
"""

from retort.plugins.data.arrays import npy_files
from retort.plugins.data.datasets import Batch, DataSets, DatasetSplits, as_datasets, is_datasets, split_datasets
from retort.plugins.data.files import csv_file, npz_file
from retort.plugins.data.images import ImageFiles, image_folder
from retort.plugins.data.loader import TensorLoader
from retort.plugins.data.shapes import shapes
from retort.plugins.data.splits import prepare, table_digest
from retort.plugins.data.tables import IMAGE_DATASETS, MAX_AUTO_CLASSES, TASKS, DataInfo, Splits, Table
from retort.plugins.data.text import ByteBlocks, python_docs, text

__all__ = [
    "IMAGE_DATASETS", "MAX_AUTO_CLASSES", "TASKS", "Batch", "ByteBlocks", "DataInfo", "DataSets", "DatasetSplits",
    "ImageFiles", "Splits", "Table", "TensorLoader", "as_datasets", "csv_file", "image_folder", "is_datasets",
    "npy_files", "npz_file", "prepare", "python_docs", "shapes", "split_datasets", "table_digest", "text",
]
