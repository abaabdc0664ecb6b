"""The one JSON-in/JSON-out loop the peer shims share (they run in the peers' own venvs, without leanml).

stdin: {"cases": [...]}; stdout (last line): {"tool": "<name> <version>", "results": [{"id", "time_s"} or
{"id", "error"}]}. A case the peer cannot model is reported as an error per case, not a crash.
"""

import contextlib
import io
import json
import sys
from collections.abc import Callable
from importlib.metadata import version


def serve(run: Callable[[dict], float], package: str) -> None:
    """Cost every case on stdin with ``run`` (peer chatter on stdout suppressed) and print the results."""
    cases = json.loads(sys.stdin.read())["cases"]
    out = []
    for c in cases:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                out.append({"id": c["id"], "time_s": float(run(c))})
        except Exception as e:  # reported per case in the benchmark's table
            out.append({"id": c["id"], "error": f"{type(e).__name__}: {e}"[:300]})
    print(json.dumps({"tool": f"{package} {version(package)}", "results": out}))
