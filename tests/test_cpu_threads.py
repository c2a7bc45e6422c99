"""A CPU backend's thread count: the cores that work at normal priority leaves free, the user's OMP_NUM_THREADS
kept, pnlm's own chosen anew in a child process."""

import os
import subprocess
import sys

import pytest

from pnlm.cpu_threads import available_cpus, cores_used_by_others

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
              pytest.mark.skipif(os.nice(0) > 0, reason="run at low priority: a 'normal' busy loop would be niced too")]
CODE = "from pnlm.cpu_threads import cpu_threads; import os; print(cpu_threads(), os.environ['OMP_NUM_THREADS'])"


def busy_loop(nice: int) -> subprocess.Popen:
    return subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", "while True: pass"])


def used_beside(nice: int) -> float:
    loop = busy_loop(nice)
    try:
        return cores_used_by_others(0.5)
    finally:
        loop.kill()
        loop.wait()


def test_a_busy_neighbour_counts_and_a_low_priority_one_does_not():
    if cores_used_by_others(0.5) > len(available_cpus()) - 1:
        pytest.skip("the machine is saturated: a low-priority loop would get no core to show it is not counted")
    # Measured side by side, so that other work on the machine weighs on both alike.
    assert used_beside(0) - used_beside(19) >= 0.6


def threads(env):
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def test_the_threads_are_the_free_cores_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    assert threads({**env, "OMP_NUM_THREADS": "3"}) == ["None", "3"]
    loop = busy_loop(0)
    try:
        chosen, variable = threads(env)
        again, _ = threads({**env, "OMP_NUM_THREADS": "7", "PNLM_FREE_CORES_THREADS": "7"})  # pnlm's, not the user's
    finally:
        loop.kill()
        loop.wait()
    assert chosen == variable and 1 <= int(chosen) <= max(1, len(available_cpus()) - 1)
    assert again != "None" and 1 <= int(again) <= max(1, len(available_cpus()) - 1)
