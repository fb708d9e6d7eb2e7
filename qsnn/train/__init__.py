"""Training: configuration and recipes, the loop, checkpoints, command-line options.

- :mod:`~qsnn.train.config`: :class:`TrainConfig` and the two recipes.
- :mod:`~qsnn.train.model`: what a run trains: a net in notation or a model of one's own
  (:class:`~qsnn.train.model.ModelSpec`, ``--model MODULE:FACTORY``).
- :mod:`~qsnn.train.loop`: :func:`train` (resumable, distributed), :func:`evaluate`.
- :mod:`~qsnn.train.checkpoint`: writing and reading checkpoints.
- :mod:`~qsnn.train.options`: the options of ``qsnn train``, declared once.
"""
