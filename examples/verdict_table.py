r"""Table 3 of several `attack_eval.py` reports side by side, with the paper's.

Xiao & Zheng (CVPR 2020), Table 3: clean and robust accuracy of no defense,
Madry et al.'s adversarial training and the defense. Each `--report` names a
row and the report folder of one evaluation; the table shows, per row, the
clean and the worst-case accuracy on the attacked images with their 95%
intervals, how many attacks ran (a worst case over a short list is an upper
bound on a longer one's; the budget line names them and the attacks of the
`adaptive` preset that did not run), the strongest
attack, the budget's shortfalls against the reference and, for a row named
as in the paper, the paper's figures. Run it from the repository root, as a
module (it reads the paper's figures from `examples.reproduction`).

Example (after one `attack_eval.py` run per published model):

  python -m examples.verdict_table \
      --report="No defense=runs/verdict/undefended" \
      --report="Madry et al.=runs/verdict/madry" \
      --report="Ours=runs/verdict/defended" --output=runs/verdict/table3.md
"""

import json
import os
import sys

from absl import app
from absl import flags

from attacks import report
from attacks import suite
try:
  from examples.reproduction import reference
except ModuleNotFoundError as error:  # Run by path: `examples` not importable.
  if error.name != "examples":
    raise
  sys.exit(f"verdict_table.py: error: {error}: it imports the `examples` package; "
           "run it from the repository root as a module: "
           "python -m examples.verdict_table ...")

FLAGS = flags.FLAGS
# The paper's row for a defended row's white-box-only worst case.
PAPER_WHITE_BOX = {"Ours": "Ours (under BPDA)"}


def parse_report_flag(item):
  """`"Name=folder"` -> `(name, folder)`.

  Raises:
    ValueError: for an item without "=" or with an empty name or folder.
  """
  name, sep, folder = item.partition("=")
  if not sep or not name or not folder:
    raise ValueError("--report takes NAME=FOLDER (a row name and an "
                     f"attack_eval.py --report_dir). Received: report={item!r}")
  return name, folder


def load_report(folder):
  """The report.json of an `attack_eval.py` report folder.

  Raises:
    FileNotFoundError: if the folder holds no report.json.
  """
  path = os.path.join(folder, "report.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No report.json in {folder!r}: run examples/attack_eval.py with "
        f"--report_dir={folder} first. Received: folder={folder!r}")
  with open(path) as file:
    return json.load(file)


def shortfall_text(entry):
  """The ways a report's budget falls below the reference, or "none ..."."""
  weaker = entry["weaker_than_reference"]
  if not weaker:
    return "none (reference strength)"
  return ", ".join(f"{w['field']} {w['used']} (ref. {w['reference']})"
                   for w in weaker)


def not_run_text(entry):
  """The attacks of the `adaptive` preset a report's model did not get."""
  ran = [a["name"] for a in entry["attacks"]] + list(entry["failed"])
  missing = suite.not_run(ran, entry["defended"])
  return f"{len(missing)} ({', '.join(missing)})" if missing else "none"


def table_lines(rows):
  """The markdown of Table 3 for `rows`.

  Args:
    rows: list of `(name, report dict)`, in table order.

  Returns:
    A list of markdown lines: the table, then one budget line per row.
  """
  paper = reference.PAPER["table3"]
  lines = ["| Model | verdict | attacks run | images × draws | clean, mean | "
           "clean, strict | worst case, strict | strongest attack | paper "
           "clean | paper robust (attack) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for name, entry in rows:
    cases = [(name, entry["worst_case"], paper.get(name))]
    if entry["defended"]:
      cases.append((f"{name} (white-box attacks only)",
                    entry["worst_case_white_box"],
                    paper.get(PAPER_WHITE_BOX.get(name))))
    for label, worst, known in cases:
      paper_cells = (f"{100 * known['clean']:.1f}% | "
                     f"{100 * known['robust']:.1f}% ({known['attack']})"
                     if known else "- | -")
      lines.append(
          f"| {label} | {entry['verdict']} | "
          f"{len(worst['attacks'])} | "
          f"{entry['images']} × "
          f"{entry['draws']} | {report.with_interval(entry['clean'], 'mean_accuracy')} | "
          f"{report.with_interval(entry['clean'], 'strict_accuracy')} | "
          f"{report.with_interval(worst, 'strict_accuracy', bold=True)} | "
          f"{worst['strongest']} | {paper_cells} |")
  lines.append("")
  for name, entry in rows:
    meta = entry["meta"]
    lines.append(
        f"- {name}: {meta.get('model', '?')}, {meta.get('data', '?')} "
        f"{meta.get('split', '')}, seed {entry['seed']}; budget "
        f"{report.budget_text(entry['budget'])}; below the reference: "
        f"{shortfall_text(entry)}; attacks: "
        f"{', '.join(a['name'] for a in entry['attacks'])}; not run of the "
        f"`adaptive` preset: {not_run_text(entry)}; "
        f"{entry['machine']['cpu_count']} CPU cores, "
        f"devices {', '.join(entry['machine']['devices'])}; crafting "
        f"{sum(a['elapsed_s'] for a in entry['attacks']) / 3600:.2f} h "
        f"(summed over units, whichever run made them), last attack_eval.py "
        f"run {meta.get('elapsed_s', 0) / 3600:.2f} h.")
  return lines


def main(argv):
  del argv
  rows = [(name, load_report(folder))
          for name, folder in map(parse_report_flag, FLAGS.report)]
  text = "\n".join(table_lines(rows)) + "\n"
  print(text)
  if FLAGS.output:
    with open(FLAGS.output, "w") as file:
      file.write(text)
    print(f"Written to {FLAGS.output}")


if __name__ == "__main__":
  flags.DEFINE_multi_string("report", None, "NAME=FOLDER: a row of the table "
                            "and its attack_eval.py --report_dir.")
  flags.DEFINE_string("output", None, "Markdown file to write (optional).")
  flags.mark_flag_as_required("report")
  app.run(main)
