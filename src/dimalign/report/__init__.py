"""Whole studies from one TOML file (``dimalign run``) and their HTML report (``dimalign report``).

- :mod:`~dimalign.report.config`: ``load_config`` reads a study file with ``--set`` overrides.
- :mod:`~dimalign.report.settings`: the settings of each stage, their defaults and checks.
- :mod:`~dimalign.report.stages`: what each stage reads, which settings it takes, what it writes.
- :mod:`~dimalign.report.pipeline`: ``plan_study`` and ``run_study``, which skip unchanged stages.
- :mod:`~dimalign.report.fingerprints`: the fingerprints of study inputs in the stage hashes.
- :mod:`~dimalign.report.stage_records`: stage records and the checks of stage folders against them.
- :mod:`~dimalign.report.stage_folders`: moving finished stage folders into place and removing leftovers.
- :mod:`~dimalign.report.results`: reading the saved results of a study directory.
- :mod:`~dimalign.report.figures`: the figures of a study (matplotlib).
- :mod:`~dimalign.report.html`: ``write_report``, the self-contained HTML report.
"""
