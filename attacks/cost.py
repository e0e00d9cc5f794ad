"""The dry run: passes, FLOPs and seconds of an evaluation before running it.

`estimate_cost` probes each attack of a `Plan` briefly on the first block
and scales the figures to every block; `CostEstimate.table` prints them, with
the wall time over N shards or devices.

Example:
  >>> estimate = estimate_cost(plan, target, x, y, shards=(1, 4))
  >>> print(estimate.table())
"""

import dataclasses
import time

import keras

from attacks import common
from attacks import plan as plan_lib
from attacks import suite

__all__ = ["CostEstimate", "PROBE_QUERIES", "PROBE_STEPS", "estimate_cost",
           "forward_flops"]

# Probes of the dry run: queries of a query attack's probe, and the steps of
# the two probes of the other attacks (their cost is a + b * steps; far
# apart, so that the noise of a loaded machine is not extrapolated much).
PROBE_QUERIES = 50
PROBE_STEPS = (1, 4)


def forward_flops(model):
  """Forward FLOPs per image of the Conv2D and Dense layers of `model`.

  Recurses into nested models, not into an `AdversarialTransform`'s f_b
  (count that one separately). A convolution costs 2·H_out·W_out·k_h·k_w·
  C_in·C_out, a dense layer 2·in·out; other layers are not counted.

  Args:
    model: a built Keras model.

  Returns:
    An int.
  """
  flops = 0
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      flops += forward_flops(layer)
    elif isinstance(layer, keras.layers.Conv2D):
      kh, kw, c_in, c_out = layer.kernel.shape
      _, h_out, w_out, _ = layer.output.shape
      flops += 2 * h_out * w_out * kh * kw * c_in * c_out
    elif isinstance(layer, keras.layers.Dense):
      c_in, c_out = layer.kernel.shape
      flops += 2 * c_in * c_out
  return int(flops)


@dataclasses.dataclass
class CostEstimate:
  """The dry run of an evaluation.

  Attributes:
    rows: one dict per attack (and `CLEAN`): `f_b_passes`, `model_passes`,
      `flops`, `seconds` for the whole evaluation, and `passes` "exact"
      (measured per step, extrapolated in steps and images) or "upper bound"
      (query attacks: every query spent).
    total: the sums over rows.
    wall_s: dict N -> estimated wall seconds with N shards or devices (the
      largest shard's load; N machines or devices that do not share cores).
    probe_images: images per probe.
    probe_s: seconds the probes took.
  """
  rows: list
  total: dict
  wall_s: dict
  probe_images: int
  probe_s: float

  def table(self):
    """A plain-text table of the estimate."""
    lines = [f"{'attack':<28} {'f_b passes':>12} {'model passes':>13} "
             f"{'GFLOP':>10} {'seconds':>9}  passes"]
    for row in self.rows + [self.total]:
      lines.append(f"{row['attack']:<28} {row['f_b_passes']:>12.4g} "
                   f"{row['model_passes']:>13.4g} {row['flops'] / 1e9:>10.4g} "
                   f"{row['seconds']:>9.1f}  {row['passes']}")
    lines += [f"wall time with {n} shard(s)/device(s): {s:.1f} s"
              for n, s in self.wall_s.items()]
    return "\n".join(lines)


def _timed(fn):
  start = time.perf_counter()
  value = fn()
  return value, time.perf_counter() - start


def _line(values):
  """`(a, b)` of a + b * steps through the values at the `PROBE_STEPS`."""
  (s1, s2), (v1, v2) = PROBE_STEPS, values
  slope = max(0.0, (v2 - v1) / (s2 - s1))
  return max(0.0, v1 - slope * s1), slope


def _probe_attack(target, name, spec, x, y, budget, seed, draws):
  """Passes and seconds of one attack on the probe images at the full budget."""
  run = lambda probe: _timed(lambda: suite.run_attack(
      target, name, spec, x, y, probe, seed=seed, draws=draws))
  if spec.kind == suite.QUERY:
    probe = dataclasses.replace(budget,
                                queries=min(budget.queries, PROBE_QUERIES))
    run(probe)  # Warm-up.
    result, seconds = run(probe)
    model = budget.queries * len(x)
    per_pass = seconds / max(result.model_passes, 1)
    f_b = model * result.f_b_passes / max(result.model_passes, 1)
    return f_b, model, per_pass * model, "upper bound"
  probes = [dataclasses.replace(budget, steps=s) for s in PROBE_STEPS]
  run(probes[0])  # Warm-up.
  (first, t1), (second, t2) = [run(probe) for probe in probes]
  fit = lambda values: _line(values)[0] + _line(values)[1] * budget.steps
  return (fit((first.f_b_passes, second.f_b_passes)),
          fit((first.model_passes, second.model_passes)), fit((t1, t2)),
          "exact")


def estimate_cost(plan, target, x, y, shards=(1,), probe_images=None,
                  progress=None):
  """The dry run: passes, FLOPs and seconds of an evaluation, per attack.

  Each attack runs on the first `probe_images` images at the full budget but
  `PROBE_STEPS` steps (after a warm-up run at the first), and its passes
  and seconds are fitted as a + b * steps; a query attack runs once at
  `PROBE_QUERIES` queries and is charged every query of its budget at the
  probe's seconds per pass (an upper bound: it stops images early). The
  figures are scaled to every block. Passes are those `suite.count_passes`
  counts (the model under attack and f_b); a transfer source other than
  these is not counted but its time is measured. FLOPs: forward FLOPs
  (`forward_flops`) times passes, an input-gradient pass counted as one
  forward (f_b: (2N+1)/(N+1) per counted pass; the model: x2 in white-box
  attacks). The probes cost about (1 + sum(PROBE_STEPS)) steps of every
  attack on one block: little beside an evaluation of many blocks and
  steps, most of a tiny one.

  Args:
    plan: the evaluation's `Plan` (`attacks.plan.make_plan`).
    target: a `suite.Target`.
    x: the evaluation's images.
    y: their labels.
    shards: numbers of shards (or devices) to estimate the wall time for.
    probe_images: images per probe (default: the plan's `unit_size`, the batch the
      evaluation runs; fewer makes the probe cheaper and the estimate of
      seconds higher).
    progress: optional callable `(name)` called after each probe (`CLEAN`
      first, then each attack), e.g. to advance a progress bar.

  Returns:
    A `CostEstimate`.
  """
  start = time.perf_counter()
  budget, seed, draws = plan.budget, plan.seed, plan.draws
  x, y = plan_lib.check_images(x, y, budget)
  count = min(probe_images or plan.unit_size, plan.images)
  common.check_number("probe_images", count, minimum=1, integer=True)
  xp, yp = x[:count], y[:count]
  f_b_flops = 0
  if target.transforms:
    layer = target.transforms[0]
    f_b_flops = forward_flops(layer.f_b) * (2 * layer.steps + 1) / (
        layer.steps + 1)
  a_flops = forward_flops(target.model)
  clean = lambda: suite.score_clean(target, xp, yp, seed=seed, draws=draws)
  clean()  # Warm-up.
  with suite.count_passes(target.model, target.transforms,
                          also=target.models()) as counters:
    _, seconds = _timed(clean)
  probed = [(plan_lib.CLEAN, int(counters["f_b"].numpy()),
             int(counters["model"].numpy()), seconds, "exact", 1)]
  if progress is not None:
    progress(plan_lib.CLEAN)
  for name, registry_name in plan.attacks:
    spec = suite.REGISTRY[registry_name]
    f_b, model, seconds, bound = _probe_attack(target, name, spec, xp, yp,
                                               budget, seed, draws)
    probed.append((name, f_b, model, seconds, bound,
                      2 if spec.kind == suite.WHITE_BOX else 1))
    if progress is not None:
      progress(name)
  rows = []
  for name, f_b, model, seconds, bound, gradient in probed:
    scale = plan.images / count
    rows.append({"attack": name, "f_b_passes": f_b * scale,
                 "model_passes": model * scale,
                 "flops": scale * (f_b * f_b_flops +
                                   gradient * model * a_flops),
                 "seconds": seconds * scale, "passes": bound})
  total = {key: sum(row[key] for row in rows)
           for key in ("f_b_passes", "model_passes", "flops", "seconds")}
  total |= {"attack": "total", "passes": "upper bound" if any(
      row["passes"] != "exact" for row in rows) else "exact"}
  wall = {n: total["seconds"] / plan.images * max(
      plan.shard_images(n, i) for i in range(n)) for n in shards}
  return CostEstimate(rows=rows, total=total, wall_s=wall, probe_images=count,
                      probe_s=time.perf_counter() - start)
