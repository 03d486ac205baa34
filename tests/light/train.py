"""A train.py that imports nothing heavy and trains nothing, for tests of sweep.py's own work (what it plans, which
GPUs a run gets, what it prints) where a real run would only add time. sweep.py runs only a file named train.py
with main() and parse_args(): hence the name. Its flags are any --name=value; a run writes summary.json
(status finished, val/acc 0.5, and the CUDA_VISIBLE_DEVICES it got) and exits 0.

With --hold=FOLDER a run first takes FOLDER/gpus-<its CUDA_VISIBLE_DEVICES> (a file made with O_EXCL: if another
run holds it, two runs share a GPU group, and this one exits 3), writes `started` in its output folder, and waits
until the test writes `release` there.

    python tests/light/train.py --output_dir=out --seed=1
"""

import json
import os
import re
import sys
import time
from pathlib import Path

HOLD_S = 600  # seconds a held run waits for its release at most: a test that never releases it has failed


class ConfigError(Exception):
    pass


def parse_args(argv=None):
    """--name=value flags -> {name: value}; ConfigError for anything else."""
    args = {}
    for arg in sys.argv[1:] if argv is None else argv:
        found = re.fullmatch(r"--(\w+)=(.*)", arg, re.S)
        if not found:
            raise ConfigError(f"expected --name=value, got {arg!r}")
        args[found[1]] = found[2]
    return args


def main(argv=None):
    args = parse_args(argv)
    out = Path(args["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if "hold" in args:
        lock = Path(args["hold"]) / f"gpus-{gpus}"
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            print(f"two runs on GPU group {gpus}", flush=True)
            sys.exit(3)
        (out / "started").write_text(gpus)
        deadline = time.monotonic() + HOLD_S
        while not (out / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        lock.unlink()
    (out / "summary.json").write_text(json.dumps({"status": "finished", "val/acc": 0.5, "gpus": gpus}))


if __name__ == "__main__":
    main()
