"""What gets counted: fan-out and SOPs, ANN MACs, energy.

- :mod:`~qsnn.measure.fanout`: exact fan-out maps, per-layer costs, ANN MACs.
- :mod:`~qsnn.measure.energy`: SNN additions against ANN MACs in picojoules.
"""
