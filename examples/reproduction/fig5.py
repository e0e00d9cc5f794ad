"""Figure 5: BPDA (softsign, tanh) accuracy vs the LL-PGD steps N of g."""

import adv_layer
from examples.reproduction import experiment
from examples.reproduction import markdown
from examples.reproduction import plots


def set_random_start(model, random_start):
  """Switches the random start of every transform in `model` (Fig. 5: off)."""
  for layer in adv_layer.find_transforms(model):
    layer.random_start = bool(random_start)
  return model


def run(exp):
  """Fig. 5: BPDA (softsign, tanh) vs N, random start of g off."""
  s = exp.settings
  f_b, fb_name = exp.models.fb_adversarial()
  points = {}
  for steps in s["fig5_steps"]:
    model = set_random_start(
        exp.models.defended(f_b, fb_name, 0.2, steps, "sweep"), False)
    spec = {"N": steps}
    point = {"clean": exp.cached(f"clean-N{steps}", spec,
                                 lambda m=model: exp.clean(m, draws=1))}
    for surrogate in ("softsign", "tanh"):
      point[surrogate] = exp.cached(
          f"bpda_{surrogate}-N{steps}", [spec, s["bpda"]],
          lambda m=model, g=surrogate: exp.score_adv(
              m, exp.bpda_pgd(m, "bpda", sign_surrogate=g), draws=1))
    points[str(steps)] = point
  steps_list = list(s["fig5_steps"])
  plot = exp.path("fig5.png")
  plots.plot_lines(plot, steps_list, {
      "clean": [points[str(n)]["clean"]["mean"] for n in steps_list],
      "BPDA softsign": [points[str(n)]["softsign"]["mean"] for n in steps_list],
      "BPDA tanh": [points[str(n)]["tanh"]["mean"] for n in steps_list]},
                  "LL-PGD steps N of g",
                  experiment.caption(exp, "BPDA " + experiment.bpda_text(exp),
                                     s["num_examples_eot"]))
  return exp.write({"points": points,
                    "attack": "BPDA " + experiment.bpda_text(exp),
                    "random_start": False}, [plot])


def summary_lines(result):
  """Markdown lines of the Figure 5 section of the summary."""
  return (markdown.summary_points(result, "N", [("clean", "clean"),
                                                ("BPDA softsign", "softsign"),
                                                ("BPDA tanh", "tanh")])
          + ["", f"Attack: {result['attack']}.",
             markdown.training_line(result, "sweep") + "."])
