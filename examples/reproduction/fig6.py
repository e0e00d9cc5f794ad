"""Figure 6: clean, BPDA-I + EOT and white-box transfer accuracy vs Δ."""

from attacks import transfer
from examples.reproduction import experiment
from examples.reproduction import markdown
from examples.reproduction import model_store
from examples.reproduction import plots


def run(exp):
  """Fig. 6: clean, BPDA-I + EOT and white-box transfer vs Δ."""
  s = exp.settings
  budget = s["bpda"]
  points = {}
  for delta, model in model_store.delta_models(exp, s["deltas"]).items():
    spec = {"delta": delta}
    points[str(delta)] = {
        "clean": exp.cached(f"clean-d{delta}", spec, lambda m=model: exp.clean(m)),
        "bpda_identity": exp.cached(
            f"bpda_i-d{delta}", [spec, budget, s["bpda_i_eot"]],
            lambda m=model: exp.score_adv(m, exp.bpda_pgd(
                m, "bpda_identity", eot_samples=s["bpda_i_eot"]))),
        "whitebox_transfer": exp.cached(
            f"wt-d{delta}", [spec, budget],
            lambda m=model: exp.score_adv(m, transfer.transfer(
                transfer.classifier_model_fn(m), exp.x_eot, exp.y_eot,
                epsilon=budget["epsilon"], steps=budget["steps"],
                step_size=budget["step_size"], seed=exp.seed))),
    }
  deltas = list(s["deltas"])
  plot = exp.path("fig6.png")
  plots.plot_lines(plot, deltas, {
      "clean": [points[str(d)]["clean"]["mean"] for d in deltas],
      "BPDA-I + EOT": [points[str(d)]["bpda_identity"]["mean"] for d in deltas],
      "white-box transfer": [points[str(d)]["whitebox_transfer"]["mean"]
                             for d in deltas]},
                  "perturbation range Δ of g",
                  experiment.caption(
                      exp, experiment.bpda_text(exp, s["bpda_i_eot"]),
                      s["num_examples_eot"]))
  return exp.write({"points": points,
                    "attack": experiment.bpda_text(exp, s["bpda_i_eot"])},
                   [plot])


def summary_lines(result):
  """Markdown lines of the Figure 6 section of the summary."""
  return (markdown.summary_points(result, "Δ", [
      ("clean", "clean"), ("BPDA-I + EOT", "bpda_identity"),
      ("white-box transfer", "whitebox_transfer")])
          + ["", f"Attack: {result['attack']}.",
             markdown.training_line(result, "sweep") + "."])
