"""train.py that signals itself at an exact moment, so that a test of what a signal does never depends on how fast
the host runs it. Right after train.py's Training.$SIGNAL_AT returns for the ${SIGNAL_AFTER:-1}th time on the main
process (open_folder: setup is done, W&B has started, no update yet; evaluation_point: a history row is written),
it sends SIG$SIGNAL (TERM, INT or KILL) to itself, or with SIGNAL_GROUP=1 to its whole process group, as Ctrl-C on a
terminal does (under `accelerate launch`: the launcher and every rank).

    SIGNAL=TERM SIGNAL_AT=evaluation_point python tests/signal_at.py ...     # any train.py flags
    SIGNAL=INT SIGNAL_AT=evaluation_point SIGNAL_GROUP=1 accelerate launch --multi_gpu tests/signal_at.py ...
"""

import functools
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402

method = getattr(train.Training, os.environ["SIGNAL_AT"])
calls = 0


@functools.wraps(method)
def then_signal(self, *args, **kwargs):
    global calls
    try:
        return method(self, *args, **kwargs)
    finally:
        calls += 1
        if self.main and calls == int(os.environ.get("SIGNAL_AFTER", "1")):
            sig = getattr(signal, "SIG" + os.environ["SIGNAL"])
            if os.environ.get("SIGNAL_GROUP"):
                os.killpg(0, sig)
            else:
                os.kill(os.getpid(), sig)


setattr(train.Training, os.environ["SIGNAL_AT"], then_signal)

if __name__ == "__main__":
    train.main()
