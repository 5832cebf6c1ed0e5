"""A long-lived training process for one executor slot.

Importing torch and kdbench costs about 2 s per process: more than a whole smoke run. A worker
pays it once and then trains the runs its executor sends, one at a time, over a line protocol:
the executor writes ``{"spec_file": …, "results": …, "options": …}`` on stdin (``options``: the run's
:class:`~kdbench.train.options.RunOptions` as JSON) and
the worker answers ``{"run_id": …, "code": N}`` on stdout (0 done, 75 locked elsewhere, 1 failed).
A run that raises is reported and the worker carries on; a worker that dies takes only its
current run with it, and the executor starts a new one.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import IO

from kdbench.processes import EXIT_DONE, EXIT_FAILED, EXIT_LOCKED

REPLY_PREFIX = "kdbench-worker-reply "


def serve(requests: IO[str], replies: IO[str]) -> None:
    from kdbench import train
    from kdbench.store.run_dir import RunLocked
    from kdbench.train.options import RunOptions

    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        spec = train.load_spec(request["spec_file"], Path(request["results"]))
        try:
            train.run(
                spec,
                Path(request["results"]),
                RunOptions.from_json(request.get("options", {})),
                show_progress=False,
            )
            code = EXIT_DONE
        except RunLocked:
            code = EXIT_LOCKED
        except Exception:  # the run is marked failed (failed.json, train.log); the worker goes on
            traceback.print_exc(file=sys.stderr)
            code = EXIT_FAILED
        replies.write(REPLY_PREFIX + json.dumps({"run_id": spec.run_id, "code": code}) + "\n")
        replies.flush()
