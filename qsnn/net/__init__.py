"""Networks: the papers' notation, quantization (k, B, half-up, straight-through) and the
trainable quantized model.

- :mod:`~qsnn.net.notation`: ``32C5-P2-64C5-P2-1000`` parsed into a plan; the presets.
- :mod:`~qsnn.net.quantization`: the quantized activation, ternary weights, :class:`Precision`.
- :mod:`~qsnn.net.models`: :class:`NetSpec` and :class:`QuantizedNet`.
"""
