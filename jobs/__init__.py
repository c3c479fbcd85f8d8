"""Ray jobs around the :mod:`tell` library: storage, training, assignment, CLI."""
