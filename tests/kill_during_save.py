"""Run the CLI in this process, killed (SIGKILL) half-way through its K-th file write.

``python tests/kill_during_save.py K ARGS...`` replaces the writer every run file goes through
(``npmobilenet.train.checkpoint.atomic_write_bytes``) with one that, on its K-th call, writes
half of the bytes to a temporary file beside the target and kills the process, as a power cut
in the middle of a save would; then runs ``npmobilenet ARGS...``.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile

from npmobilenet.cli import main
from npmobilenet.train import checkpoint


def killing_writer(k: int, write):
    calls = 0

    def write_or_die(path, data, overwrite=False):
        nonlocal calls
        calls += 1
        if calls == k:
            directory = os.path.dirname(os.path.abspath(os.fspath(path)))
            fd, _ = tempfile.mkstemp(prefix=".tmp-", suffix=".partial", dir=directory)
            with os.fdopen(fd, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return write(path, data, overwrite=overwrite)

    return write_or_die


if __name__ == "__main__":
    checkpoint.atomic_write_bytes = killing_writer(int(sys.argv[1]), checkpoint.atomic_write_bytes)
    sys.exit(main(sys.argv[2:]))
