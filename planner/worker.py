"""`python -m planner.worker`: evaluate one trial for `executors.ProcessExecutor`.

Reads from stdin the parent's `sys.path`, then (pickled) the environment factory, the
allocation, its fidelity, its draws (`planner.draws`), the screen share it is also scored
at (`Environment.evaluate`) and the driver's pid; writes the pickled outcome of
`executors.evaluate` to stdout and exits. Whatever the environment prints goes to stderr,
so it cannot garble the outcome. A fresh interpreter imports only what the trial needs
(not the CLI and the search strategies, as multiprocessing's spawn would by re-running the
driver's main module), and exits on its own when the driver is gone, so a killed driver
leaves no orphan holding a GPU.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def main() -> None:
    results = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the environment's prints go to stderr
    sys.path[:] = pickle.load(sys.stdin.buffer)  # where the factory's module is found
    factory, allocation, fidelity, draws, screen, parent = pickle.load(sys.stdin.buffer)
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()
    from planner.executors import evaluate

    pickle.dump(evaluate(factory, allocation, fidelity, draws, screen), results)
    results.close()


if __name__ == "__main__":
    main()
