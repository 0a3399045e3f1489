"""A worker process of ``quantize_checkpoint(..., jobs=N)``: quantizes one shard.

    python -m mono_quant._shard_worker TASK.pickle RESULT.pickle THREADS

A fresh interpreter rather than ``multiprocessing``: nothing is inherited from the caller
(threads, OpenMP state), and the caller's ``__main__`` is never re-imported, so it works from
scripts without a main guard, notebooks and stdin alike. The task is the arguments of
``sharded._quantize_shard`` for each shard of this worker's share; the result file holds
``("ok", [result, ...])`` or ``("error", exception)`` (then a ``.failed`` marker is written too,
so the parent stops the other workers at once).
"""

from __future__ import annotations

import os
import pickle
import sys


def main(task_path: str, result_path: str, threads: int) -> int:
    import torch

    from .sharded import _quantize_shard

    torch.set_num_threads(threads)
    with open(task_path, "rb") as handle:
        tasks = pickle.load(handle)  # written by the parent process for this run only
    try:
        outcome = ("ok", [_quantize_shard(*task) for task in tasks])
    except Exception as exc:  # reported to the parent, which raises it
        outcome = ("error", exc)
    try:
        data = pickle.dumps(outcome)
        pickle.loads(data)  # an exception class whose arguments do not round-trip is sent as text
    except Exception:
        data = pickle.dumps(("error", RuntimeError(f"{type(outcome[1]).__name__}: {outcome[1]}")))
    with open(result_path + ".partial", "wb") as handle:
        handle.write(data)
    os.replace(result_path + ".partial", result_path)
    if outcome[0] == "error":
        open(result_path.removesuffix(".result") + ".failed", "wb").close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
