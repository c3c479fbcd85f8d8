"""``tell train``: the driver (:mod:`jobs.train.driver`) plans and runs the Ray Train job of
the per-worker loop (:mod:`jobs.train.worker`); :mod:`jobs.faults` injects failures
for tests."""
