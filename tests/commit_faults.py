"""A fault shared by the commit tests: the process dies while a commit promotes its parts."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

from jobs import storage


@contextlib.contextmanager
def dies_after_first_promotion(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Within the block, ``storage.promote_file`` promotes one part, then the process "dies"
    (KeyboardInterrupt: no cleanup code runs); the block must end in that death."""
    original, lock, promoted = storage.promote_file, threading.Lock(), []

    def promote_then_die(src, dst):
        with lock:
            if promoted:
                raise KeyboardInterrupt
            original(src, dst)
            promoted.append(dst)

    monkeypatch.setattr(storage, "promote_file", promote_then_die)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(storage, "promote_file", original)
