"""Benchmark: what --precise_bn and --evals_per_epoch cost, against train.py's default evaluation.

    python bench/eval_cost.py [--rounds 2] [--write]

The same run (digits, resnet10t, 16 px, batch 64, 3 epochs, seed 0) three ways, alternating order each round,
W&B disabled: the default (one evaluation an epoch, running batch-norm statistics), --precise_bn, and
--precise_bn --evals_per_epoch 4. From each run's summary.json: time/train_s (training steps only), time/eval_s
(validation and test passes), time/precise_bn_s (recomputing the statistics) and the process's wall time.
"""

import argparse
import statistics
import tempfile

from common import add_write_flag, report, train_run

BASE = ["--batch_size=64", "--epochs=3", "--img_size=16", "--seed=0"]
WAYS = {"default": [], "--precise_bn": ["--precise_bn"],
        "--precise_bn --evals_per_epoch 4": ["--precise_bn", "--evals_per_epoch=4"]}
KEYS = ("time/train_s", "time/eval_s", "time/precise_bn_s")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    add_write_flag(p)
    args = p.parse_args()
    seen = {way: [] for way in WAYS}
    for i in range(args.rounds):
        for way in (list(WAYS) if i % 2 == 0 else list(reversed(WAYS))):
            with tempfile.TemporaryDirectory() as tmp:
                r = train_run(BASE + WAYS[way], tmp)
            seen[way].append({**{k: r["summary"][k] for k in KEYS}, "wall": r["wall"],
                              "points": len(r["history"]), "test/acc": r["summary"]["test/acc"]})
            print(way, seen[way][-1], flush=True)
    lines = [f"`python train.py {' '.join(BASE)}` plus the flags below; medians over {args.rounds} rounds (seconds). "
             "The evaluation share is (time/eval_s + time/precise_bn_s) / time/train_s.", "",
             "| flags | evaluation points | time/train_s | time/eval_s | time/precise_bn_s | evaluation share "
             "| wall | wall / default's | test/acc |", "|---|---|---|---|---|---|---|---|---|"]
    default_wall = statistics.median(r["wall"] for r in seen["default"])
    for way, rounds in seen.items():
        m = {k: statistics.median(r[k] for r in rounds) for k in (*KEYS, "wall", "test/acc")}
        share = (m["time/eval_s"] + m["time/precise_bn_s"]) / m["time/train_s"]
        lines.append(f"| {way} | {rounds[0]['points']} | {m['time/train_s']:.2f} | {m['time/eval_s']:.2f} "
                     f"| {m['time/precise_bn_s']:.2f} | {share:.2f} | {m['wall']:.1f} | {m['wall'] / default_wall:.2f} "
                     f"| {m['test/acc']:.3f} |")
    report(args, "Evaluation cost: precise BN and evaluations inside an epoch", "\n".join(lines))


if __name__ == "__main__":
    main()
