"""Deployment: export formats, the NumPy reference runner, mapping onto cores.

- :mod:`~qsnn.deploy.export`: qsnn-int packages and NIR graphs.
- :mod:`~qsnn.deploy.runner`: a pure-NumPy runner of exported packages (no PyTorch).
- :mod:`~qsnn.deploy.mapping`: placing layers onto neuromorphic cores.
"""
