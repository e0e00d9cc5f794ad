"""Table 2: black-box and query attacks on the three models of Table 3."""

from attacks import suite
from examples.reproduction import experiment
from examples.reproduction import markdown
from examples.reproduction import model_store
from examples.reproduction import plots
from examples.reproduction import reference

ATTACKS = ("blackbox_transfer", "hop_skip_jump", "gen_attack", "square")


def run(exp):
  """Table 2: black-box attacks on no defense, Madry and ours."""
  s = exp.settings
  models_, _ = model_store.main_models(exp)
  surrogate = exp.models.plain(seed_offset=100)
  budget = suite.Budget(chunk_size=s["chunk_size"], **s["table2"])
  rows = {}
  for name, model in models_.items():
    rows[name] = {
        "clean": exp.cached(f"clean-{name}", {}, lambda m=model: exp.clean(m)),
        "suite": exp.cached(
            f"blackbox-{name}", s["table2"],
            lambda m=model: experiment.run_suite(exp, m, list(ATTACKS), budget,
                                                 surrogate)),
    }
  names = list(rows)
  series = {"clean": [rows[n]["clean"]["mean"] for n in names]}
  for attack in ATTACKS:
    series[attack] = [attack_row(rows[n]["suite"], attack)["mean_accuracy"]
                      for n in names]
  plot = exp.path("table2.png")
  plots.plot_bars(plot, names, series, experiment.caption(
      exp, f"eps 8/255, transfer {s['table2']['steps']} steps, "
      f"{s['table2']['queries']} queries", s["num_examples_eot"]))
  return exp.write({"rows": rows}, [plot])


def attack_row(suite_json, name):
  """The row of attack `name` in a suite record."""
  for row in suite_json["attacks"]:
    if row["name"] == name:
      return row
  raise KeyError(f"No attack {name!r} in the suite record. Received: name={name!r}")


def summary_lines(result):
  """Markdown lines of the Table 2 section of the summary."""
  paper = reference.PAPER["table2"]
  lines = ["| Model | Clean | Transfer | HSJ | GA | Square | Clean (paper) | "
           "Transfer (paper) | HSJ (paper) | GA (paper) |",
           "|---" * 10 + "|"]
  for name, row in result["rows"].items():
    ours = [markdown.pct(attack_row(row["suite"], a)["mean_accuracy"])
            for a in ATTACKS]
    p = paper[name]
    lines.append(f"| {name} | {markdown.pct(row['clean']['mean'])} | "
                 + " | ".join(ours)
                 + f" | {markdown.pct(p['clean'])} | "
                 f"{markdown.pct(p['transfer'])} | "
                 f"{markdown.pct(p['hsj'])} | {markdown.pct(p['ga'])} |")
  budget = result["settings"]["table2"]
  lines += ["", f"eps 8/255; transfer: PGD {budget['steps']} steps on an "
            f"independently trained f_a (another seed); query attacks: "
            f"{budget['queries']} queries per image (paper: foolbox defaults).",
            markdown.training_line(result, "main") + "."]
  return lines
