"""``rnnbench worker ADDRESS [--gpu N] [--nthreads N] [--name NAME]``: a Dask worker set up for rnnbench.

It is ``dask worker`` (one worker process under a nanny) with what benchmarks need:

- the resource :data:`harness.run.cluster.HOST_RESOURCE` = 1: a timing case requests all of it and runs alone on
  the worker; a correctness case requests :data:`harness.run.cluster.SHARE` and shares it;
- ``distributed.worker.daemon = False``: a daemonic process may not start children, and every case runs in a
  per-case child process (its timeout, crash and out-of-memory handling are the local runner's);
- ``--gpu N``: ``CUDA_VISIBLE_DEVICES=N`` and the resource ``GPU`` = 1, so one worker per GPU;
- this checkout's root on ``PYTHONPATH``, so that the tasks import the same rnnbench the host has.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Dict, List, Optional

from harness.core.errors import UsageError


def worker_command(address: str, nthreads: int, gpu: Optional[int] = None, name: Optional[str] = None,
                   python: str = sys.executable) -> List[str]:
    """The ``dask worker`` command line of an rnnbench worker."""
    from harness.run.cluster import HOST_RESOURCE
    res = f"{HOST_RESOURCE}=1" + (",GPU=1" if gpu is not None else "")
    where = ["--scheduler-file", address] if os.path.isfile(address) else [address]
    cmd = [python, "-m", "distributed.cli.dask_worker", *where, "--nworkers", "1", "--nthreads", str(nthreads),
           "--resources", res, "--no-dashboard"]
    if name:
        cmd += ["--name", name]
    return cmd


def worker_env(gpu: Optional[int] = None, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of the worker: not daemonic, this rnnbench importable, the chosen GPU only."""
    env = dict(os.environ if base is None else base)
    env["DASK_DISTRIBUTED__WORKER__DAEMON"] = "False"
    # Dask's statistical profiler samples the worker's threads every 10 ms: CPU taken from the cases it runs
    env.setdefault("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "False")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def cli_worker(args) -> int:
    """Run the worker until it stops (Ctrl-C or SIGTERM stop it); its exit code."""
    from harness.core.system import cpu_count
    from harness.run.cluster import ClusterError, check_address

    address = check_address(args.address)
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ClusterError("rnnbench worker needs Dask distributed (pip install 'rnnbench[cluster]', or "
                           "pip install distributed)") from None
    if args.gpu is not None and (isinstance(args.gpu, bool) or args.gpu < 0):
        raise UsageError(f"--gpu: got {args.gpu!r}; expected a GPU index >= 0")
    n = cpu_count() if args.nthreads is None else args.nthreads
    if not isinstance(n, int) or n < 1:
        raise UsageError(f"--nthreads: got {n!r}; expected an integer >= 1")
    cmd = worker_command(address, n, args.gpu, args.name)
    print("rnnbench worker: " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, env=worker_env(args.gpu))

    def forward(signum, frame):  # the nanny closes its worker cleanly on SIGTERM
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, forward)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        forward(signal.SIGTERM, None)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return 130
    finally:
        signal.signal(signal.SIGTERM, old)
