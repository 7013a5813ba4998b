"""Files of the pipeline: triplets, features, object tables, run directories, manifests.

The functions are imported from their modules, for example
``from dimalign.io.triplets import load_triplets``:

- :mod:`~dimalign.io.triplets`: ``load_triplets``, ``split_triplets``,
  ``save_triplets``, ``validate_triplets`` and ``summarize_triplets``.
- :mod:`~dimalign.io.features`: ``load_features`` for ``.npy`` and HDF5 feature files.
- :mod:`~dimalign.io.objects`: ``ObjectTable``, ``read_object_table`` and
  ``write_object_table`` (``objects.tsv``, or one name per line).
- :mod:`~dimalign.io.runs`: ``EmbeddingResult``, ``load_embedding`` and
  ``save_embedding`` (run directories and plain embedding files).
- :mod:`~dimalign.io.things`: ``fetch`` and ``find_human_triplets`` for the
  published THINGS files, with pinned URLs and checksums.
- :mod:`~dimalign.io.files`: atomic writes, checksums and ``manifest.json``.
"""
