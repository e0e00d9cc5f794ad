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

A unit file is trusted only after `read_unit` has checked it: it must load
(every array of an .npz is a zip member with its own CRC-32, so a truncated,
empty or bit-flipped file fails to load) and carry its identity: the plan key
it was written under (`meta["key"]`, absent in files written before it was
recorded), its attack and block, the image indices of that block and the
labels of those images. A file that fails is a `UnitError` naming the file
and what is wrong: `attacks.execute.run` recomputes it with a warning,
`attacks.merge.merge` refuses it. A damaged plan.json is refused with what to
do.
"""

import contextlib
import fcntl
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from attacks import plan as plan_lib

__all__ = [
    "PLAN_FIELDS", "PLAN_FILE", "RERUNS_DIR", "UNITS_DIR", "UnitError",
    "claim", "load_unit", "lock_path", "locked", "read_plan", "read_unit",
    "try_lock", "write_atomic", "write_npz"
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


class UnitError(ValueError):
  """A unit or rerun file that is damaged or holds another unit's result."""


# What reading a damaged .npz raises (truncated, empty, bit-flipped, no meta).
_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError,
           ValueError)


def load_unit(path):
  """`(arrays, meta)` of a file `write_npz` wrote.

  Raises:
    UnitError: for a file that cannot be read whole (naming it).
  """
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files if k != "meta"}
      return arrays, json.loads(str(data["meta"]))
  except _DAMAGE as error:
    raise UnitError(f"{path} is damaged ({type(error).__name__}: "
                    f"{str(error)[:200]})") from error


def read_unit(path, key, attack, block, index, y=None):
  """`(arrays, meta)` of unit file `path`, checked against its identity.

  Args:
    path: the file.
    key: the plan key it must have been written under.
    attack: its attack's display name (`plan.CLEAN` for clean scores).
    block: its block.
    index: the image indices of the block (`range(start, stop)`).
    y: the block's labels, or None (not checked).

  Returns:
    `(arrays, meta)`.

  Raises:
    UnitError: for a damaged file (`load_unit`) or one whose recorded key,
      attack, block, image indices or labels are not the expected ones,
      naming the file and each difference.
  """
  arrays, meta = load_unit(path)
  index = np.asarray(index)
  problems = []
  if meta.get("key", key) != key:
    problems.append(f"it was written as {meta['key']}")
  if meta.get("attack") != attack or meta.get("block") != block:
    problems.append(f"it holds {meta.get('attack')!r} on block "
                    f"{meta.get('block')!r}")
  found = arrays.get("index")
  if found is None or not np.array_equal(found, index):
    problems.append("its image indices are not the block's")
  if y is not None and not np.array_equal(arrays.get("y"), np.asarray(y)):
    problems.append("its labels are not the images' labels")
  correct = arrays.get("correct")
  if correct is None or correct.ndim != 2 or correct.shape[1] != len(index):
    problems.append("it holds no per-draw scores of the block's images")
  if problems:
    raise UnitError(f"{path} is not unit {attack!r} on block {block} "
                    f"({'; '.join(problems)})")
  return arrays, meta


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
    old = _load_plan_record(path, report_dir)
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
  return plan_lib.Plan.from_dict(_load_plan_record(path, report_dir))


def _load_plan_record(path, report_dir):
  """The JSON record of plan.json `path`; a damaged one is refused."""
  try:
    with open(path) as f:
      record = json.load(f)
    if not isinstance(record, dict) or "budget" not in record:
      raise ValueError("not a plan record")
    return record
  except (ValueError, OSError) as error:
    raise ValueError(
        f"{path} is damaged ({type(error).__name__}: {str(error)[:200]}). It "
        "records which evaluation the units belong to: restore it, or delete "
        "it and run the same evaluation again (each unit file is then "
        "checked against the new plan, and those that do not match are "
        f"recomputed). Received: report_dir={report_dir!r}") from error
