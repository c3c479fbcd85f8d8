"""The input set of a job: opened once (:mod:`jobs.input.inspect`), scanned before training
(:mod:`jobs.input.scan`), sampled for the explain report (:mod:`jobs.input.sample`)."""
