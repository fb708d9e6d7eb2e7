"""Simulation: the step-by-step definition, the event engine, noise, verification, runs.

- :mod:`~qsnn.sim.stepwise`: :func:`simulate_batch`, the executable definition (any device).
- :mod:`~qsnn.sim.engine`: the event-driven numba engine and its compiled program.
- :mod:`~qsnn.sim.events`: :class:`EventSimulator`, batches through the engine.
- :mod:`~qsnn.sim.noise`: reproducible pixel noise and spike drops.
- :mod:`~qsnn.sim.verify`: checks against the exact ANN.
- :mod:`~qsnn.sim.run`: :func:`simulate`, a whole test set into a :class:`SimulationResult`.
"""
