"""Labelling and rating dimensions: the web study, its SQLite database and the analyses.

- :mod:`~dimalign.labeling.study`: create a study from an embedding and its images; data access.
- :mod:`~dimalign.labeling.answers`: validation of a participant's labels and ratings.
- :mod:`~dimalign.labeling.app`: the Flask app participants use; :func:`~dimalign.labeling.app.serve`.
- :mod:`~dimalign.labeling.db`: the SQLite schema and its migrations.
- :mod:`~dimalign.labeling.analysis`: word clouds, rater agreement, shares of kinds of dimension.
- :mod:`~dimalign.labeling.semantic`: the automatic semantic check with a sentence embedding model.
- :mod:`~dimalign.labeling.human_labels`: published labels of the human SPoSE dimensions.
- :mod:`~dimalign.labeling.summary`: ``dimalign labels summarize``.
"""
