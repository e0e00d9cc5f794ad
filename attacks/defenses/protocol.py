r"""The leaderboard protocol, stated once, and the command of one entry.

`PROTOCOL`: the first 100 CIFAR-10 test images, L∞ ε = 8/255, seed 0; the
reference budget of `attacks.budgets` (AutoAttack's `rand` version: APGD-CE
and APGD-DLR, 100 iterations, EOT 20, 1 restart; Square with 5,000 queries
of 8 draws; R = 20 scoring draws per image), the attacks of the
`autoattack_rand` preset plus what the `adaptive` preset adds for the model
(`attacks.registry`: attacks that need a transform are skipped on a model
without one, and a model without transform runs one attack per family); the
sanity checks on every image and the convergence reruns on.

`attack_eval_command(entry, ...)` turns an entry and the protocol into the
`examples/attack_eval.py` command line, an entry's `overrides` replacing
protocol flags (the report then lists each way its budget falls below the
reference, and the table shows it). An entry with a literal `command` runs
that command. Rerunning a command resumes it from its report folder's
finished units.
"""

import dataclasses
import os
import shlex
import sys

__all__ = ["PROTOCOL", "Protocol", "SMOKE", "attack_eval_command",
           "model_path", "report_dir", "shell_line"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
ATTACK_EVAL = os.path.join("examples", "attack_eval.py")
# The flags the protocol owns: an entry's overrides may not set them.
OWNED_FLAGS = ("model", "report_dir", "import")


@dataclasses.dataclass(frozen=True)
class Protocol:
  """The settings every entry is evaluated under (attack_eval flags).

  Attributes:
    dataset: tfds dataset.
    num_examples: N, the first N test images (>= 100 for the table).
    epsilon: the L∞ radius, as attack_eval's --epsilon takes it.
    seed: seed of the attacks and the scoring draws.
    budget: attack_eval's --budget preset; the fields below override it.
    steps, restarts, eot_samples, queries, query_draws, draws: the budget.
    attacks: attack names and presets (--attacks).
    sanity_images: images of the sanity reruns.
    convergence: the doubled-budget reruns.
    adversarial_surrogate: the adversarially trained surrogate of the
      transfer attacks that want one.
  """
  dataset: str = "cifar10"
  num_examples: int = 100
  epsilon: str = "8/255"
  seed: int = 0
  budget: str = "reference"
  steps: int = 100
  restarts: int = 1
  eot_samples: int = 20
  queries: int = 5000
  query_draws: int = 8
  draws: int = 20
  attacks: tuple = ("autoattack_rand", "adaptive")
  sanity_images: int = 100
  convergence: bool = True
  adversarial_surrogate: str = "zoo:cifar10/resnet18_madry"

  def flags(self):
    """The protocol as attack_eval flags: dict name -> value."""
    return {
        "dataset": self.dataset, "num_examples": self.num_examples,
        "epsilon": self.epsilon, "seed": self.seed, "budget": self.budget,
        "steps": self.steps, "restarts": self.restarts,
        "eot_samples": self.eot_samples, "queries": self.queries,
        "query_draws": self.query_draws, "draws": self.draws,
        "attacks": ",".join(self.attacks),
        "sanity_images": self.sanity_images,
        "convergence": self.convergence,
        "adversarial_surrogate": self.adversarial_surrogate,
    }


PROTOCOL = Protocol()
# The same pipeline at the size of CI and demos (not for the table).
SMOKE = Protocol(num_examples=20, budget="smoke", steps=5, eot_samples=2,
                 queries=100, query_draws=2, draws=2, attacks=("adaptive",),
                 sanity_images=4)


def report_dir(entry, report_root):
  """The report folder of `entry` under `report_root`."""
  return os.path.join(report_root, entry.name)


def model_path(entry, report_root):
  """Where a built entry's model is saved, beside its report folder."""
  return os.path.join(report_root, "models", f"{entry.name}.keras")


def _flag(name, value):
  if isinstance(value, bool):
    return f"--{name}" if value else f"--no{name}"
  if isinstance(value, (list, tuple)):
    value = ",".join(str(v) for v in value)
  return f"--{name}={value}"


def attack_eval_command(entry, report_root, protocol=PROTOCOL,
                        python=sys.executable, root=ROOT):
  """The `examples/attack_eval.py` argv that evaluates `entry`.

  Args:
    entry: a `catalog.Entry`.
    report_root: folder of the report folders (one per entry).
    protocol: a `Protocol`.
    python: the interpreter.
    root: the repository root (where examples/attack_eval.py is).

  Returns:
    The argv list. A literal `entry.command` is split and its `python` and
    script path made absolute; otherwise: the model (`entry.model`, or the
    built model's path), the protocol's flags with `entry.overrides` over
    them, the surrogates, `--import` of each module and the report folder.

  Raises:
    ValueError: for an override of a flag the protocol owns.
  """
  folder = report_dir(entry, report_root)
  if entry.command is not None:
    argv = shlex.split(entry.command.format(report_dir=folder))
    if argv and argv[0] in ("python", "python3"):
      argv[0] = python
    if len(argv) > 1 and argv[1] == ATTACK_EVAL:
      argv[1] = os.path.join(root, ATTACK_EVAL)
    return argv
  owned = sorted(set(entry.overrides) & set(OWNED_FLAGS))
  if owned:
    raise ValueError(f"Entry {entry.name!r} overrides flags the protocol "
                     f"owns ({', '.join(OWNED_FLAGS)}). Received: "
                     f"overrides={owned}")
  flags = protocol.flags()
  if entry.surrogate:
    flags["surrogate"] = entry.surrogate
  if entry.adversarial_surrogate:
    flags["adversarial_surrogate"] = entry.adversarial_surrogate
  flags.update(entry.overrides)
  model = entry.model or model_path(entry, report_root)
  imports = list(entry.imports)
  if entry.builder is not None and "attacks.defenses" not in imports:
    imports.insert(0, "attacks.defenses")
  argv = [python, os.path.join(root, ATTACK_EVAL), f"--model={model}"]
  argv += [_flag(name, value) for name, value in flags.items()
           if value is not None]
  argv += [f"--import={module}" for module in imports]
  argv.append(f"--report_dir={folder}")
  return argv


def shell_line(argv):
  """`argv` as one shell line."""
  return " ".join(shlex.quote(part) for part in argv)
