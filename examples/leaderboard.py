r"""The leaderboard of defenses RobustBench does not rank: run an entry, or regenerate.

Each entry of `attacks.defenses.catalog` (and of any `--catalog` JSON file)
is one defense. One command builds and evaluates (or resumes) an entry under
the protocol of `attacks.defenses.protocol`:

  python examples/leaderboard.py --entry=sap --report_root=runs/leaderboard

It saves the defended model under --report_root/models/ (a builder entry),
writes the entry and its command to --report_root/entries/NAME.json and
runs `examples/attack_eval.py` on it with --report_dir=--report_root/NAME
(rerunning resumes from the finished units). Exit status: attack_eval's.

One command regenerates the table (docs/leaderboard.json,
docs/LEADERBOARD.md and docs/leaderboard.png) from the finished reports:

  python examples/leaderboard.py --regenerate --report_root=runs/leaderboard

The published table is made from the finished reports kept in the
repository (each entry's report.json, report.md and robustbench.json under
docs/results/leaderboard/NAME/, and its run snapshot
runs/leaderboard/entries/NAME.json under docs/results/leaderboard/entries/):

  python examples/leaderboard.py --regenerate \
      --report_root=docs/results/leaderboard --run_root=runs/leaderboard \
      --skip_unfinished

A report folder without report.json, or with the verdict INCOMPLETE, is
refused (exit status 3, one line naming it); --skip_unfinished lists such
entries as pending instead. --budget=smoke runs an entry at the CI size
(`protocol.SMOKE`): the report then states every shortfall. --budget=full
drops an entry's stated overrides (the CPU budget of the randomized
entries) and its literal command, so every field is the reference's; give
it its own --report_root (a report folder keeps one budget).

Adding a defense from your own package: write a JSON list of entries (the
fields of `attacks.defenses.catalog.Entry`) and pass it with --catalog; put
your package's directory on PYTHONPATH (or run from it).
"""

import os

# oneDNN kernels roughly double conv speed on this project's CPUs (AVX2, no
# AVX-512), where TensorFlow leaves them off by default; set before TF loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import dataclasses
import json
import subprocess
import sys

from absl import app
from absl import flags

from attacks.defenses import catalog
from attacks.defenses import protocol as protocol_lib
from attacks.defenses import table

FLAGS = flags.FLAGS
BAD_INPUT_STATUS = 3
# "reference": the protocol with each entry's stated overrides (or its
# literal command); "full": the protocol's budget for every entry, overrides
# and literal commands dropped (for a machine that affords it, e.g. a GPU);
# "smoke": the CI size.
PROTOCOLS = {"reference": protocol_lib.PROTOCOL, "full": protocol_lib.PROTOCOL,
             "smoke": protocol_lib.SMOKE}
FULL = "full"
ENTRIES_DIR = "entries"


def define_flags():
  """Defines the program's flags (called before `app.run`)."""
  flags.DEFINE_string("entry", None, "Run or resume this entry.")
  flags.DEFINE_bool("regenerate", False, "Rebuild the table from the "
                    "finished reports.")
  flags.DEFINE_string("report_root", "runs/leaderboard",
                      "Folder of the report folders, one per entry.")
  flags.DEFINE_string("run_root", None, "--regenerate: the --report_root "
                      "that the commands of entries without a run snapshot "
                      "name (default: --report_root); for a table made from "
                      "reports copied elsewhere.")
  flags.DEFINE_multi_string("catalog", [], "JSON file with a list of further "
                            "entries (repeatable).")
  flags.DEFINE_list("entries", None, "--regenerate: only these entries "
                    "(each must be finished).")
  flags.DEFINE_bool("skip_unfinished", False, "--regenerate: list unfinished "
                    "entries as pending instead of refusing.")
  flags.DEFINE_enum("budget", "reference", list(PROTOCOLS),
                    "--entry: the protocol: reference (with the entry's "
                    "stated overrides), full (the reference budget for "
                    "every entry, overrides dropped) or smoke (CI size).")
  flags.DEFINE_bool("dry_run", False, "--entry: print the command only.")
  flags.DEFINE_string("output_json", "docs/leaderboard.json",
                      "--regenerate: the JSON table.")
  flags.DEFINE_string("output_md", "docs/LEADERBOARD.md",
                      "--regenerate: the Markdown table.")
  flags.DEFINE_string("plot", "docs/leaderboard.png",
                      "--regenerate: the plot (empty: none).")


def load_entries(catalog_files, report_root):
  """Built-in entries, then each catalog file's, then saved snapshots.

  A snapshot (--report_root/entries/NAME.json, written by a run) stands for
  an entry no catalog given now names.

  Raises:
    ValueError: for a bad file or entry, or a name given twice.
  """
  entries = {entry.name: entry for entry in catalog.ENTRIES}
  for path in catalog_files:
    with open(path, encoding="utf-8") as f:
      items = json.load(f)
    if not isinstance(items, list):
      raise ValueError(f"A catalog is a JSON list of entries. Received: "
                       f"catalog={path!r}")
    for item in items:
      entry = catalog.from_dict(item)
      if entry.name in entries:
        raise ValueError(f"Entry {entry.name!r} is defined twice. Received: "
                         f"catalog={path!r}")
      entries[entry.name] = entry
  folder = os.path.join(report_root, ENTRIES_DIR)
  if os.path.isdir(folder):
    for name in sorted(os.listdir(folder)):
      stem = name[:-len(".json")]
      if name.endswith(".json") and stem not in entries:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
          entries[stem] = catalog.from_dict(json.load(f)["entry"])
  return entries


def leaderboard_command(entry, report_root, catalog_files, budget):
  """The command line of this program that runs or resumes `entry`."""
  parts = ["python examples/leaderboard.py", f"--entry={entry.name}",
           f"--report_root={report_root}"]
  parts += [f"--catalog={path}" for path in catalog_files
            if entry not in catalog.ENTRIES]
  if budget != "reference":
    parts.append(f"--budget={budget}")
  return " ".join(parts)


def recorded_command(entry, report_root, protocol):
  """attack_eval's command as the docs show it (`python examples/...`)."""
  return protocol_lib.shell_line(protocol_lib.attack_eval_command(
      entry, report_root, protocol, python="python", root=""))


# The entry fields a built model depends on.
BUILD_FIELDS = ("classifier", "builder", "builder_kwargs", "imports")


def check_built_model(entry, path, root):
  """Refuses a saved model built from other settings than `entry`'s.

  A built model is reused when its entry's last run (the snapshot in
  --report_root/entries/) had the same classifier, builder, builder
  arguments and imports.

  Raises:
    ValueError: naming the model file and the fields that changed.
  """
  snapshot = os.path.join(root, ENTRIES_DIR, f"{entry.name}.json")
  if not (os.path.exists(path) and os.path.exists(snapshot)):
    return
  with open(snapshot, encoding="utf-8") as f:
    saved = json.load(f)["entry"]
  current = json.loads(json.dumps(entry.as_dict()))  # As the snapshot has it.
  changed = [name for name in BUILD_FIELDS
             if saved.get(name) != current[name]]
  if changed:
    raise ValueError(
        f"{path} was built with other settings than entry {entry.name!r} "
        f"now has ({', '.join(changed)}); delete it and its report folder "
        f"{protocol_lib.report_dir(entry, root)} to rebuild and rerun. "
        f"Received: " + ", ".join(f"{name}={current[name]!r} (built with "
                                  f"{saved.get(name)!r})" for name in changed))


def require_file(entry, field, spec):
  """Raises FileNotFoundError for a missing file `spec` (a zoo name passes).

  The message names the entry's `train_command`, when it has one.
  """
  if spec.startswith("zoo:") or os.path.exists(spec):
    return
  raise FileNotFoundError(
      f"Entry {entry.name!r} needs its {field} {spec!r}"
      + (f"; train it with: {entry.train_command}"
         if entry.train_command else "")
      + f". Received: {field}={spec!r}")


def run_entry(entries):
  """Builds (if needed) and evaluates --entry; returns attack_eval's status."""
  entry = catalog.by_name(FLAGS.entry, tuple(entries.values()))
  if FLAGS.budget == FULL:
    entry = dataclasses.replace(entry, overrides={}, command=None)
  protocol = PROTOCOLS[FLAGS.budget]
  root = FLAGS.report_root
  argv = protocol_lib.attack_eval_command(entry, root, protocol)
  print(protocol_lib.shell_line(argv))
  if FLAGS.dry_run:
    return 0
  sys.path.insert(0, os.getcwd())  # As attack_eval does for --import.
  for module in entry.imports:
    __import__(module)
  if entry.model is not None:
    require_file(entry, "model", entry.model)
  if entry.builder is not None:
    path = protocol_lib.model_path(entry, root)
    check_built_model(entry, path, root)
    if not os.path.exists(path):
      require_file(entry, "classifier", entry.classifier_spec())
      model = entry.build_model(seed=protocol.seed)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      model.save(path)
      print(f"Saved {model.name} to {path}")
  snapshot_dir = os.path.join(root, ENTRIES_DIR)
  os.makedirs(snapshot_dir, exist_ok=True)
  with open(os.path.join(snapshot_dir, f"{entry.name}.json"), "w",
            encoding="utf-8") as f:
    json.dump({
        "entry": entry.as_dict(),
        "command": recorded_command(entry, root, protocol),
        "leaderboard_command": leaderboard_command(
            entry, root, FLAGS.catalog, FLAGS.budget),
        "budget": FLAGS.budget}, f, indent=1)
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [os.getcwd()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                       if p])
  return subprocess.run(argv, env=env, check=False).returncode


def regenerate(entries):
  """Writes the JSON, Markdown and plot; returns the number of rows."""
  root = FLAGS.report_root
  run_root = FLAGS.run_root or root
  chosen = FLAGS.entries or list(entries)
  rows, pending = [], []
  for name in chosen:
    entry = catalog.by_name(name, tuple(entries.values()))
    folder = protocol_lib.report_dir(entry, root)
    snapshot = os.path.join(root, ENTRIES_DIR, f"{name}.json")
    if os.path.exists(snapshot):
      with open(snapshot, encoding="utf-8") as f:
        saved = json.load(f)
      command, rerun = saved["command"], saved["leaderboard_command"]
    else:
      command = recorded_command(entry, run_root, protocol_lib.PROTOCOL)
      rerun = leaderboard_command(entry, run_root, FLAGS.catalog,
                                  "reference")
    if not os.path.isdir(folder) and not FLAGS.entries:
      pending.append((entry, rerun, "not run yet"))
      continue
    try:
      report = table.load_finished_report(folder)
    except table.UnfinishedReport as error:
      if not FLAGS.skip_unfinished:
        raise
      pending.append((entry, rerun, str(error).split(". Received")[0]))
      continue
    rows.append(table.row(entry, report, command, rerun, folder))
  rows = table.write_json(rows, FLAGS.output_json)
  plot_name = None
  if FLAGS.plot:
    os.makedirs(os.path.dirname(FLAGS.plot) or ".", exist_ok=True)
    table.plot_claimed_vs_measured(
        rows, FLAGS.plot, "Claimed against measured robust accuracy "
        f"(CIFAR-10, L∞ {protocol_lib.PROTOCOL.epsilon})")
    plot_name = os.path.relpath(
        FLAGS.plot, os.path.dirname(os.path.abspath(FLAGS.output_md)))
  command = " ".join(
      ["python examples/leaderboard.py --regenerate",
       f"--report_root={root}"] +
      ([f"--run_root={FLAGS.run_root}"] if FLAGS.run_root else []) +
      [f"--catalog={p}" for p in FLAGS.catalog] +
      (["--skip_unfinished"] if FLAGS.skip_unfinished else []))
  text = table.markdown(rows, pending, plot_name, command)
  os.makedirs(os.path.dirname(FLAGS.output_md) or ".", exist_ok=True)
  with open(FLAGS.output_md, "w", encoding="utf-8") as f:
    f.write(text)
  print(f"{len(rows)} rows, {len(pending)} pending: {FLAGS.output_json}, "
        f"{FLAGS.output_md}" + (f", {FLAGS.plot}" if FLAGS.plot else ""))
  return len(rows)


def main(argv):
  del argv
  try:
    if bool(FLAGS.entry) == FLAGS.regenerate:
      raise ValueError("Give exactly one of --entry=NAME and --regenerate. "
                       f"Received: entry={FLAGS.entry!r}, "
                       f"regenerate={FLAGS.regenerate}")
    entries = load_entries(FLAGS.catalog, FLAGS.report_root)
    if FLAGS.entry:
      return run_entry(entries)
    regenerate(entries)
    return 0
  except (ValueError, FileNotFoundError, ImportError) as error:
    print(f"leaderboard.py: error: {error}", file=sys.stderr)
    return BAD_INPUT_STATUS


if __name__ == "__main__":
  define_flags()
  app.run(main)
