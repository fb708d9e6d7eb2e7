"""Reporting: the summary (result.json), files and tables, figures.

- :mod:`~qsnn.report.summary`: :func:`summarize`, as the papers report it.
- :mod:`~qsnn.report.tables`: files (JSON, CSV, the originals' text files) and printed tables.
- :mod:`~qsnn.report.plots`: the figures.
"""
