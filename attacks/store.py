"""The unit store: atomic files, the plan record and per-unit claims.

Each finished unit is written atomically into `<report_dir>/units/` (a
hidden temp file in the same folder, fsync, `os.replace`) as an .npz named by
`Plan.key`, so `kill -9` loses at most the units in flight. A killed write
leaves a hidden `.*.tmp` file, ignored by everything here and safe to delete.
`<report_dir>/units/plan.json` records the evaluation (`claim`); a run whose
R, `unit_size`, model, images or seed differ, that changes a budget field a
recorded attack uses, or that drops an attack, is refused with a ValueError
naming the differences.

Processes that share a folder (shards, or two identical commands started
by mistake) share its units: a process runs a unit only while it holds the
unit's lock (`locked`, an exclusive `fcntl.flock` on a hidden `.KEY.lock`
file, released by the kernel when the process dies), and skips a unit whose
file exists once it holds the lock. The extra runs of a report are kept the
same way in `<report_dir>/reruns/`.
"""

import contextlib
import fcntl
import json
import os
import tempfile

import numpy as np

from attacks import plan as plan_lib

__all__ = [
    "PLAN_FIELDS", "PLAN_FILE", "RERUNS_DIR", "UNITS_DIR", "claim",
    "load_unit", "lock_path", "locked", "read_plan", "try_lock",
    "write_atomic", "write_npz"
]

UNITS_DIR = "units"
RERUNS_DIR = "reruns"
PLAN_FILE = "plan.json"
PLAN_LOCK = ".plan.lock"


def lock_path(folder, key):
  """The hidden lock file of unit `key` in `folder`."""
  return os.path.join(folder, f".{key}.lock")


def try_lock(path, block=False):
  """An open file holding an exclusive lock on `path`, or None if held.

  Args:
    path: the lock file (created if absent; it stays, empty, afterwards).
    block: wait for the lock instead of returning None.

  Returns:
    The open file (close it to release the lock), or None.
  """
  handle = open(path, "a")  # pylint: disable=consider-using-with
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
  except BlockingIOError:
    handle.close()
    return None
  return handle


@contextlib.contextmanager
def locked(path):
  """Holds an exclusive lock on `path` (waiting for it) for the body."""
  handle = try_lock(path, block=True)
  try:
    yield
  finally:
    handle.close()


def write_atomic(path, write):
  """Writes a file so that it is either complete at `path` or absent.

  `write(f)` fills a hidden temp file (binary) in the same folder, which is
  fsynced and renamed over `path` (`os.replace` is atomic on POSIX), then the
  folder is fsynced so that the rename survives a crash.
  """
  folder = os.path.dirname(path)
  fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                              suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temp, path)
  except BaseException:
    os.unlink(temp)
    raise
  directory = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(directory)
  finally:
    os.close(directory)


def write_npz(path, arrays, meta=None):
  """Writes `arrays` and the JSON `meta` as one .npz, atomically."""
  write_atomic(path, lambda f: np.savez(f, meta=np.array(plan_lib.dumps(meta or {})),
                                        **arrays))


def load_unit(path):
  """`(arrays, meta)` of a file `write_npz` wrote."""
  with np.load(path, allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files if k != "meta"}
    return arrays, json.loads(str(data["meta"]))


# plan.json fields that must not change within one folder.
PLAN_FIELDS = ("draws", "unit_size", "model_digest", "data_digest", "images",
                "seed", "randomized", "bpda_layers")


def claim(report_dir, plan):
  """Creates the units folder, or checks that it holds this evaluation.

  The attack list may grow: a plan whose attacks include every attack of the
  recorded one (same display and registry names) replaces the record, and
  the finished units stay valid, since a unit's key does not depend on the
  list. So may a budget field that no recorded attack uses (e.g. `queries`
  when only gradient attacks ran). Dropping or renaming an attack, or
  changing a field a recorded attack uses, is refused like any other change.
  The check and the write hold the folder's plan lock, so two processes
  starting on one folder agree on one record.

  Returns:
    The units folder.

  Raises:
    ValueError: for a folder holding another evaluation's units.
  """
  folder = os.path.join(report_dir, UNITS_DIR)
  os.makedirs(folder, exist_ok=True)
  with locked(os.path.join(folder, PLAN_LOCK)):
    _claim_locked(report_dir, folder, plan)
  return folder


def _claim_locked(report_dir, folder, plan):
  path = os.path.join(folder, PLAN_FILE)
  record = plan.to_dict()
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    changed = [f"{field}: {old.get(field)} -> {record.get(field)}"
               for field in PLAN_FIELDS
               if old.get(field) != record.get(field)]
    changed += [f"budget.{field}: {old['budget'][field]} -> "
                f"{record['budget'][field]}"
                for field in sorted(plan_lib.Plan.from_dict(old).used_fields())
                if old["budget"][field] != record["budget"][field]]
    dropped = [pair for pair in old["attacks"] if pair not in record["attacks"]]
    if dropped:
      changed.append(f"attacks dropped or renamed: {dropped}")
    if changed:
      raise ValueError(
          f"{folder} holds units of another evaluation ({'; '.join(changed)}); "
          f"use a fresh report_dir. Received: report_dir={report_dir!r}")
    if old == record:
      return
  write_atomic(path, lambda f: f.write(
      json.dumps(record, indent=1, sort_keys=True).encode()))


def read_plan(report_dir):
  """The `Plan` recorded in `report_dir`.

  Raises:
    ValueError: when the folder holds no evaluation.
  """
  path = os.path.join(report_dir, UNITS_DIR, PLAN_FILE)
  if not os.path.exists(path):
    raise ValueError(f"No evaluation in {report_dir} (no {UNITS_DIR}/"
                     f"{PLAN_FILE}). Received: report_dir={report_dir!r}")
  with open(path) as f:
    return plan_lib.Plan.from_dict(json.load(f))
