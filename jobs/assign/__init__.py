"""``tell assign``: the driver (:mod:`jobs.assign.driver`) streams the input through the
predictor actors (:mod:`jobs.assign.predictor`) into the sink's write tasks
(:mod:`jobs.assign.sink`), then commits (:mod:`jobs.commit.writer`)."""
