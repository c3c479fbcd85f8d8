"""Exactly-once output of ``tell assign``: the protocol and its writer
(:mod:`jobs.commit.writer`), and the one reader of what a commit holds
(:mod:`jobs.commit.reader`)."""
