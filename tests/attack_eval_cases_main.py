r"""Runs examples/attack_eval.py's `main` on several command lines in one process.

Used by attack_eval_test.py: one TensorFlow start-up for many short cases.

  python tests/attack_eval_cases_main.py CASES.json RESULTS.json

CASES.json holds a list of argument lists (without the program name);
RESULTS.json gets, per case, the exit status and what it printed to stdout
and stderr (an exception that escapes `main` is recorded as status -1 with
its traceback).
"""

import contextlib
import io
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from examples import attack_eval


def run_case(args):
  """`main` on `args`: `(status, stdout, stderr)`."""
  flags.FLAGS.unparse_flags()
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      flags.FLAGS(["attack_eval.py", *args])
      status = attack_eval.main([])
    except Exception:  # pylint: disable=broad-except
      status = -1
      err.write(traceback.format_exc())
  return status, out.getvalue(), err.getvalue()


def main(cases_path, results_path):
  attack_eval.define_flags()
  with open(cases_path) as f:
    cases = json.load(f)
  with open(results_path, "w") as f:
    json.dump([run_case(args) for args in cases], f)


if __name__ == "__main__":
  main(*sys.argv[1:])
