"""Benchmark check (not a unit test): our Timer against ``torch.utils.benchmark.Timer`` on one torch workload.

    python -m harness.timing_check [--rounds 3] [--budget 2.0] [--threads N]

Workload: ``torch.nn.LSTM`` inference forward (no grad), B=64, T=100, I=H=256, float32, CPU. Each round
times it with our :class:`harness.timing.Timer`, with ``torch.utils.benchmark.Timer.blocked_autorange`` and
with ``adaptive_autorange``, in turn (interleaved, so a drift of the machine hits all three alike). It prints
every median and the ratio of our median to torch's (median over rounds); they must agree within 5 %
(exit 1 otherwise).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from typing import List, Optional

TOLERANCE = 0.05


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.timing_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds per measurement (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=256)
    args = ap.parse_args(argv)

    import torch
    import torch.utils.benchmark as tb

    from harness.timing import Timer
    from implementations.base import cpu_count

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
    ours, blocked, adaptive = [], [], []
    for r in range(args.rounds):
        m = Timer(fwd, budget_s=args.budget, target_rel_iqr=0.01, min_runs=10).run()
        ours.append(m.median)
        tt = tb.Timer(stmt="fwd()", globals={"fwd": fwd}, num_threads=threads)
        mb = tt.blocked_autorange(min_run_time=args.budget)
        blocked.append(mb.median)
        ma = tt.adaptive_autorange(threshold=0.01, max_run_time=args.budget)
        adaptive.append(ma.median)
        print(f"round {r + 1}: ours {m.median * 1e3:8.3f} ms (n={m.n}, x{m.number}, IQR/med {m.rel_iqr:.3f}, "
              f"{m.stop_reason})   torch blocked {mb.median * 1e3:8.3f} ms (n={len(mb.times)})   "
              f"torch adaptive {ma.median * 1e3:8.3f} ms (n={len(ma.times)})")
    o, b, a = (statistics.median(v) for v in (ours, blocked, adaptive))
    rb, ra = o / b, o / a
    print(f"median over rounds: ours {o * 1e3:.3f} ms, torch blocked_autorange {b * 1e3:.3f} ms, "
          f"torch adaptive_autorange {a * 1e3:.3f} ms")
    print(f"ratio ours/torch: {rb:.4f} (blocked), {ra:.4f} (adaptive); tolerance ±{TOLERANCE:.0%}")
    ok = abs(rb - 1) <= TOLERANCE and abs(ra - 1) <= TOLERANCE
    print("AGREE" if ok else "DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
