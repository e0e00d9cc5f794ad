"""Figure 7: BPDA-I + EOT accuracy vs the number of EOT samples."""

from examples.reproduction import experiment
from examples.reproduction import markdown
from examples.reproduction import model_store
from examples.reproduction import plots


def run(exp):
  """Fig. 7: BPDA-I + EOT accuracy vs EOT samples for Δ 0.1 and 0.2."""
  s = exp.settings
  curves = {}
  for delta, model in model_store.delta_models(exp, s["fig7_deltas"]).items():
    curves[str(delta)] = {
        str(k): exp.cached(
            f"eot{k}-d{delta}", [{"delta": delta}, s["bpda"], s["fig7_steps"]],
            lambda m=model, k=k: exp.score_adv(m, exp.bpda_pgd(
                m, "bpda_identity", eot_samples=k, steps=s["fig7_steps"])))
        for k in s["fig7_eot"]}
  plot = exp.path("fig7.png")
  eot = list(s["fig7_eot"])
  attack = "BPDA-I " + experiment.bpda_text(exp, steps=s["fig7_steps"])
  plots.plot_lines(plot, eot, {
      f"Δ = {d}": [curves[d][str(k)]["mean"] for k in eot] for d in curves},
                  "EOT samples",
                  experiment.caption(exp, attack, s["num_examples_eot"]),
                  xscale="log")
  return exp.write({"curves": curves, "attack": attack}, [plot])


def summary_lines(result):
  """Markdown lines of the Figure 7 section of the summary."""
  curves = result["curves"]
  eot = list(next(iter(curves.values())))
  lines = ["| Δ | " + " | ".join(f"EOT {k}" for k in eot) + " |",
           "|---" * (len(eot) + 1) + "|"]
  for delta, curve in curves.items():
    lines.append(f"| {delta} | " + " | ".join(
        markdown.pct(curve[k]["mean"]) for k in eot) + " |")
  return lines + ["", f"Attack: {result['attack']}.",
                  markdown.training_line(result, "sweep") + "."]
