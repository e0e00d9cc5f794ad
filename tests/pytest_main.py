"""Runs one test file under pytest: the `main` of every Bazel `py_test` here.

The tests are `tf.test.TestCase` classes collected by pytest (the project's one test runner), so the
Bazel targets run them the same way `make test` does. pytest exits non-zero
when the file fails or collects no test, so a target can never pass empty.
"""

import sys

import pytest


def main(argv):
  """Runs pytest on the files in `argv` and returns its exit code.

  Args:
    argv: test file paths relative to the workspace root.

  Returns:
    pytest's exit code.
  """
  return int(pytest.main(["-q", "-p", "no:cacheprovider", *argv]))


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
