"""Markdown pieces that every experiment's summary section uses."""


def pct(value):
  return "-" if value is None else f"{100 * value:.1f}%"


def header(result):
  """Provenance line of one experiment."""
  s = result["settings"]
  machine = result["machine"]
  main = result["training_presets"]["main"]
  return (f"Data: {result['data']}, test split, first {s['num_examples']} "
          f"images (clean) / first {s['num_examples_eot']} (attacks); preset "
          f"`{result['preset']}`, seed {result['seed']}, scored with "
          f"{s['draws']} draws of g; f_b {main['fb_model']} width "
          f"{main['fb_width']}, f_a {main['fa_model']} width {main['fa_width']}; "
          f"machine: {machine['cpu_count']} CPUs, {machine['platform']}, TF "
          f"{machine['tensorflow']}; {run_time(result)}.")


def run_time(result):
  """Evaluation and training minutes of one experiment, as summary text."""
  training_s = sum(run["seconds"] for model in result["models"].values()
                   if isinstance(model["runs"], list) for run in model["runs"])
  return (f"evaluation {result['evaluation_s'] / 60:.1f} min, training of its "
          f"{len(result['models'])} models {training_s / 60:.1f} min (models "
          "shared with other experiments counted in each)")


def training_line(result, kind):
  t = result["training_presets"][kind]
  examples = t["train_examples"] or "all 50,000"
  drop = ("constant rate" if t["lr_drop_epoch"] is None
          else f"x0.1 after epoch {t['lr_drop_epoch']}")
  return (f"{kind} models: {t['epochs']} epochs on {examples} training images, "
          f"batch {t['batch_size']}, SGD lr {t['learning_rate']} momentum "
          f"{t['momentum']}, {drop}")


def summary_points(result, x_label, keys):
  points = result.get("points") or {}
  lines = [f"| {x_label} | " + " | ".join(label for label, _ in keys) + " |",
           "|---" * (len(keys) + 1) + "|"]
  for x_value, point in points.items():
    lines.append(f"| {x_value} | " + " | ".join(
        pct(point[key]["mean"]) for _, key in keys) + " |")
  return lines
