"""Runs many bad-input cases of one entry point in this one process (tests/test_cli_errors.py).

    python -m tests.cli_runner CASES.json RESULTS.json

CASES.json: {"module": "experiments.generate", "cases": [{"argv": [...], "stdin": "..."}]}.
Each case goes through experiments.cli.invoke, as `python -m MODULE ARGV` would, with file
descriptor 2 captured; RESULTS.json gets [{"code", "stderr"}] in the same order. Importing JAX
once for all of an entry point's cases keeps the table fast.
"""

import importlib
import io
import json
import os
import sys
import tempfile

from experiments import cli


def run_case(main, argv: list[str], stdin: str) -> dict:
    """One case: exit code and everything written to stderr (Python and C alike)."""
    saved_fd, saved_stdin = os.dup(2), sys.stdin
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        sys.stdin = io.StringIO(stdin)
        try:
            code = cli.invoke(main, argv)
        except BaseException as e:  # noqa: BLE001 - a bug: record its traceback as run would
            import traceback

            traceback.print_exc()
            code = f"raised {type(e).__name__}"
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            sys.stdin = saved_stdin
        capture.seek(0)
        return {"code": code, "stderr": capture.read().decode("utf-8", "replace")}


def main() -> None:
    cases_path, results_path = sys.argv[1:3]  # invoke replaces sys.argv with each case's
    spec = json.loads(open(cases_path).read())
    module = importlib.import_module(spec["module"])
    name = spec["module"].rsplit(".", 1)[1]
    results = [run_case(module.main, [f"{name}.py", *case["argv"]], case.get("stdin", ""))
               for case in spec["cases"]]
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
