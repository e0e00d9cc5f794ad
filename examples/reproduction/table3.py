"""Table 3: clean and worst-case accuracy of no defense, Madry and ours."""

from adv_layer import data
from adv_layer import training
from attacks import suite
from examples import benchmark
from examples.reproduction import experiment
from examples.reproduction import markdown
from examples.reproduction import model_store
from examples.reproduction import plots
from examples.reproduction import presets
from examples.reproduction import reference


def epoch_timing(exp, f_b):
  """Seconds per training epoch of the three Table 3 trainings, side by side.

  Times one `fit` epoch over the first `timing_examples` training images
  (after a one-batch warm-up) of fresh, identically initialised f_a, and
  scales to the 50,000 images of a full epoch.
  """
  preset = exp.models.training("main")
  count = exp.settings["timing_examples"]
  x, y = data.load_arrays(presets.DATASET, f"train[:{count}]",
                          data_dir=exp.models.data_dir)
  madry = training.madry_settings(preset)

  def fresh():
    return exp.models.build_fa(preset, exp.seed)

  candidates = {
      "No defense": fresh(),
      "Madry et al.": training.AdversarialTrainer(
          fresh(), epsilon=madry["epsilon"], steps=madry["steps"],
          step_size=madry["step_size"], seed=exp.seed),
      "Ours": training.defended_model(f_b, fresh(), epsilon=0.2, steps=13,
                                      target=preset["target"], seed=exp.seed),
  }
  timing = {}
  for name, model in candidates.items():
    training.compile_sgd(model, preset["learning_rate"], preset["momentum"])
    seconds = benchmark.epoch_seconds(model, x, y, preset["batch_size"])
    timing[name] = {"seconds": seconds, "images": int(len(x)),
                    "seconds_per_50k_epoch":
                        seconds * presets.TRAIN_IMAGES / len(x)}
  return timing


def run(exp):
  """Table 3: clean and worst-case robust accuracy, time per epoch."""
  models_, f_b = model_store.main_models(exp)
  s = exp.settings
  budget = suite.Budget(chunk_size=s["chunk_size"], **s["suite"])
  rows = {}
  for name, model in models_.items():
    rows[name] = {
        "clean": exp.cached(f"clean-{name}", {}, lambda m=model: exp.clean(m)),
        "suite": exp.cached(
            f"suite-{name}", s["suite"],
            lambda m=model: experiment.run_suite(exp, m, "adaptive", budget)),
    }
  timing = exp.cached("epoch_timing", {"n": s["timing_examples"]},
                      lambda: epoch_timing(exp, f_b))
  names = list(rows)
  plot = exp.path("table3.png")
  plots.plot_bars(plot, names, {
      "clean": [rows[n]["clean"]["mean"] for n in names],
      "worst case (strict)": [rows[n]["suite"]["worst_case"]["strict_accuracy"]
                              for n in names]},
                 experiment.caption(
                     exp, f"adaptive suite eps 8/255, steps "
                     f"{s['suite']['steps']}, EOT {s['suite']['eot_samples']}",
                     s["num_examples_eot"]))
  return exp.write({"rows": rows, "epoch_timing": timing}, [plot])


def summary_lines(result):
  """Markdown lines of the Table 3 section of the summary."""
  paper = reference.PAPER["table3"]
  lines = ["| Method | A_std (ours) | A_std (ours, attack images, strict) | "
           "A_rob (ours, strict) | attack (ours) | "
           "A_std (paper) | A_rob (paper) | attack (paper) | s/epoch (ours, "
           "50k images) |", "|---|---|---|---|---|---|---|---|---|"]
  rows = result["rows"]
  timing = result["epoch_timing"]
  for name, row in rows.items():
    worst = row["suite"]["worst_case"]
    entries = [(name, worst, paper[name])]
    if name == "Ours":
      entries.insert(0, ("Ours (under BPDA)", row["suite"]["worst_case_white_box"],
                         paper["Ours (under BPDA)"]))
    for label, w, p in entries:
      lines.append(
          f"| {label} | {markdown.pct(row['clean']['mean'])} | "
          f"{markdown.pct(row['suite']['clean']['strict_accuracy'])} | "
          f"{markdown.pct(w['strict_accuracy'])}"
          f" | {w['strongest']} | {markdown.pct(p['clean'])} | "
          f"{markdown.pct(p['robust'])} | "
          f"{p['attack']} | {timing[name]['seconds_per_50k_epoch']:.0f} |")
  budget = result["settings"]["suite"]
  lines += ["", f"Attacks: the `adaptive` suite, eps 8/255, {budget['steps']} "
            f"steps, {budget['restarts']} restart(s), EOT {budget['eot_samples']}"
            f", {budget['queries']} queries (Square). A_std is on the clean-accuracy "
            "images; A_rob and the clean figure beside it are on the (fewer) "
            "attack images, both strict over the draws of g. Epoch times: one epoch "
            f"over {next(iter(timing.values()))['images']} training images, "
            "measured side by side in one run and scaled to 50,000.",
            markdown.training_line(result, "main") + "."]
  return lines
