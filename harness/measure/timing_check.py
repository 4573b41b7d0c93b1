"""Benchmark check (not a unit test): our Timer against ``torch.utils.benchmark.Timer`` on one torch workload.

    python -m harness.measure.timing_check [--rounds 5] [--budget 2.0] [--threads N]

Workload: ``torch.nn.LSTM`` inference forward (no grad), B=64, T=100, I=H=256, float32, CPU. Each round
times it with our :class:`harness.measure.timing.Timer`, with ``torch.utils.benchmark.Timer.blocked_autorange`` and
with ``adaptive_autorange``, in turn (interleaved, order alternating, so that a drift of the machine hits
all three alike). It prints every median and the median over rounds of the per-round ratio ours/torch;
that must be within 5 % of 1 (exit 1 otherwise). On a busy machine use more rounds and a longer budget.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import List, Optional

TOLERANCE = 0.05


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.measure.timing_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds per measurement (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=256)
    args = ap.parse_args(argv)

    import torch
    import torch.utils.benchmark as tb

    from harness.measure.timing import Timer
    from harness.core.system import cpu_count

    threads = args.threads or cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    H, B, T = args.hidden, args.batch, args.seq_len
    lstm = torch.nn.LSTM(H, H).eval()
    x = torch.randn(T, B, H)

    def fwd():
        with torch.no_grad():
            return lstm(x)

    print(f"workload: nn.LSTM forward, T={T} B={B} I=H={H} float32, torch {torch.__version__}, "
          f"{threads} thread(s), budget {args.budget:g} s per measurement")
    tt = tb.Timer(stmt="fwd()", globals={"fwd": fwd}, num_threads=threads)
    tt.timeit(3)  # warm torch's own path too, so neither side pays first-call costs in round 1

    def ours():
        return Timer(fwd, budget_s=args.budget, target_rel_iqr=0.01, min_runs=10).run().median

    def blocked():
        return tt.blocked_autorange(min_run_time=args.budget).median

    def adaptive():
        return tt.adaptive_autorange(threshold=0.01, max_run_time=args.budget).median

    methods = {"ours": ours, "blocked": blocked, "adaptive": adaptive}
    res = {k: [] for k in methods}
    for r in range(args.rounds):
        # Alternate the order (ABC, CBA, ...) so that a drift of the machine within a round hits all alike.
        order = list(methods) if r % 2 == 0 else list(methods)[::-1]
        for k in order:
            res[k].append(methods[k]())
        print(f"round {r + 1}: " + "   ".join(f"{k} {res[k][-1] * 1e3:8.3f} ms" for k in methods), flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    # Paired per-round ratios cancel slow drift between rounds; their median is the figure that counts.
    rb = statistics.median(o / t for o, t in zip(res["ours"], res["blocked"]))
    ra = statistics.median(o / t for o, t in zip(res["ours"], res["adaptive"]))
    print(f"median over rounds: ours {med['ours'] * 1e3:.3f} ms, torch blocked_autorange {med['blocked'] * 1e3:.3f} ms,"
          f" torch adaptive_autorange {med['adaptive'] * 1e3:.3f} ms")
    print(f"median of per-round ratios ours/torch: {rb:.4f} (blocked_autorange), {ra:.4f} (adaptive_autorange); "
          f"tolerance +-{TOLERANCE:.0%}")
    ok = abs(rb - 1) <= TOLERANCE and abs(ra - 1) <= TOLERANCE
    print("AGREE" if ok else "DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
