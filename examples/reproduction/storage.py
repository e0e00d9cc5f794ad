"""Keys and atomic JSON files of the stored models and cached results."""

import hashlib
import json
import os


def digest(settings):
  """A short hex digest of a JSON-ready settings dict (key order ignored)."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:10]


def write_json(path, value):
  """Writes JSON atomically (a kill never leaves half a file)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  temporary = path + ".tmp"
  with open(temporary, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, default=float)
  os.replace(temporary, path)


def read_json(path, default=None):
  """Reads JSON, or returns `default` when the file does not exist."""
  if not os.path.exists(path):
    return default
  with open(path, encoding="utf-8") as f:
    return json.load(f)
