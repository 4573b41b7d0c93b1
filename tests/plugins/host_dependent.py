"""A plug-in backend that one host has and another lacks: unavailable where ``RNNBENCH_TEST_LACKS_HOSTDEP`` is
set in the environment (the cluster tests start one worker so). Its maths is the NumPy reference's."""
from __future__ import annotations

import os
from typing import Tuple

from tests.plugins.acme_backend import NumpyDelegate

ENV = "RNNBENCH_TEST_LACKS_HOSTDEP"


class HostDependent(NumpyDelegate):
    family = "hostdep"
    variant = "hostdep"

    @classmethod
    def probe(cls, device: str) -> Tuple[bool, str]:
        if os.environ.get(ENV):
            return False, "hostdep's library is not installed on this host (test stand-in)"
        return super().probe(device)
