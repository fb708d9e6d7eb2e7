"""The spiking network: schemes, neurons, exact thresholds, conversion, the exact ANN.

- :mod:`~qsnn.snn.schemes`: the scheme registry (NSD, SG, INT) and each one's properties.
- :mod:`~qsnn.snn.neurons`: the neuron steps as pure functions of (state, input).
- :mod:`~qsnn.snn.thresholds`: exact rational rules and integer threshold tables.
- :mod:`~qsnn.snn.counting`: numba kernels from integer membranes to counts.
- :mod:`~qsnn.snn.model`: :class:`SpikingNet` and its file format.
- :mod:`~qsnn.snn.convert`: trained model to :class:`SpikingNet`.
- :mod:`~qsnn.snn.reference`: the tables' ANN (:func:`reference_counts`).
- :mod:`~qsnn.snn.exact`: the exact ANN of the trained model (:class:`ExactANN`).
"""
