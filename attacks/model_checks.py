"""What an evaluation finds about a model before attacking it, and applies.

`check_model` asks three questions of any Keras model (the checks of
AutoAttack's `checks.py`, acted on rather than warned about):

- Is it random? Two inference passes on the same images disagree
  (`attacks.detect.is_randomized`), or the user says so.
- Does a seeded pass repeat? (`attacks.detect.replay_is_exact`): replay of
  a recorded result is exact only then, and the report says which.
- Which layers (or raw ops) mask their input gradient: None, zero, not
  finite, or shattered (autodiff disagrees with finite differences of the
  forward pass; `attacks.detect.masked_layers`, probed layer by layer), and
  is the whole model's input gradient one of the first three
  (`whole_gradient`)? The layers whose output has their input's shape are
  wrapped with identity BPDA for the white-box attacks
  (`attacks.bpda`, Athalye et al. 2018), and a layer that declares its own
  surrogate (`attacks.bpda.surrogate_of`) with that surrogate, unless the
  user turns it off or names the layers.

The answers (`ModelChecks`) go into the `Target` and the report.
"""

import contextlib
import dataclasses

from adv_layer.layer import find_transforms
from attacks import bpda as bpda_lib
from attacks import detect
from attacks import estimators

__all__ = [
    "BPDA_MODES", "ModelChecks", "RANDOMIZED", "SURROGATE_NOTE",
    "check_model", "check_modes",
    "reason_text", "whole_gradient"
]

RANDOMIZED = ("auto", "yes", "no")
# How a `bpda_layers` reason names a layer's own surrogate backward pass
# (`attacks.bpda.surrogate_of`); without it the backward is the identity.
SURROGATE_NOTE = "; backward: "
BPDA_MODES = ("auto", "off")


@dataclasses.dataclass(frozen=True)
class ModelChecks:
  """What the evaluation found about the model, and what it applied.

  Attributes:
    randomized: whether the model is treated as random.
    randomized_why: how that was decided.
    replay_exact: whether seeded passes repeat bit for bit.
    replay_why: how that was decided.
    masked_layers: dict layer path -> reason (input gradient None, zero,
      not finite or shattered) of the layers and raw ops with masked input
      gradients.
    bpda_layers: dict layer path -> why it is wrapped with BPDA (identity
      backward, or the layer's own surrogate, named after `SURROGATE_NOTE`).
    notes: further lines for the report.
    whole_gradient: the whole model's input gradient ("ok", "none",
      "zero" or "nonfinite"; an AdversarialTransform counts as identity).
  """
  randomized: bool
  randomized_why: str
  replay_exact: bool
  replay_why: str
  masked_layers: dict
  bpda_layers: dict
  notes: tuple = ()
  whole_gradient: str = "ok"

  def to_dict(self):
    record = dataclasses.asdict(self)
    record["notes"] = list(self.notes)
    return record


_REASONS = {"none": "input gradient None", "zero": "input gradient zero",
            "nonfinite": "input gradient not finite",
            "shattered": ("input gradient shattered: autodiff disagrees with "
                          "finite differences of the forward pass")}


def reason_text(reason):
  """How a report words a `attacks.detect.MASK_REASONS` entry."""
  return _REASONS[reason]


def check_modes(randomized, bpda):
  """Raises ValueError for a `randomized` or `bpda` setting it does not know."""
  if randomized not in RANDOMIZED:
    raise ValueError(f"`randomized` must be one of {RANDOMIZED}. Received: "
                     f"randomized={randomized!r}")
  if isinstance(bpda, str) and bpda not in BPDA_MODES:
    raise ValueError("`bpda` must be 'auto', 'off' or a list of layer "
                     f"names. Received: bpda={bpda!r}")


def whole_gradient(model, x, seed=0):
  """The model's input gradient status (`attacks.detect`), transforms BPDA-I.

  An `AdversarialTransform` has no gradient path by design (its attacks
  use `attacks.estimators`), so it is replaced by the identity here (its
  loop does not run); any other None, zero or non-finite gradient is the
  model's.
  """
  view = (estimators.substitute_transform(model, lambda layer, x: x)
          if find_transforms(model) else contextlib.nullcontext())
  with view:
    return detect.input_gradient_status(model, x, seed=seed)


def check_model(model, x, randomized="auto", bpda="auto", seed=0,
                step=detect.FD_STEP):
  """Looks at a model before attacking it: randomness, replay, masking.

  Args:
    model: a Keras model (logits out).
    x: a few of the evaluation's images (the first 8 are used).
    randomized: "auto" (two inference passes disagree), "yes" or "no".
    bpda: "auto" (wrap every masked layer whose output has its input's
      shape, or that declares its own surrogate), "off" (wrap none), or a
      list of layer names to wrap.
    seed: seed of the probes.
    step: the finite-difference step of the shattered-gradient check (an
      attack's step size).

  Returns:
    A `ModelChecks`.

  Raises:
    ValueError: for a bad `randomized`/`bpda`, a named layer that does not
      exist, or named layers on a model holding an `AdversarialTransform`.
  """
  check_modes(randomized, bpda)
  if randomized == "auto":
    random = detect.is_randomized(model, x)
    random_why = ("detected: two inference passes on the same images "
                  f"{'disagree' if random else 'agree'}")
  else:
    random = randomized == "yes"
    random_why = f"forced (randomized={randomized})"
  if random:
    exact = detect.replay_is_exact(model, x, seed=seed)
    exact_why = ("two seeded passes " + ("agree" if exact else
                                          "disagree: some draws cannot be "
                                          "seeded (e.g. stateful tf.random "
                                          "ops), so a replay is not exact"))
  else:
    exact, exact_why = True, "deterministic model"
  whole = whole_gradient(model, x, seed)
  masked = {m.path: _REASONS[m.reason]
            for m in detect.masked_layers(model, x, seed=seed, step=step)}
  notes = []
  if whole != "ok" and not masked:
    notes.append(f"The whole model's input gradient is {whole}, but no layer "
                 "or op was found masked (e.g. a subclassed model's own "
                 "call): no BPDA applies, so the white-box attacks see no "
                 "gradient.")
  wrapped = {}
  if find_transforms(model) and bpda not in ("auto", "off"):
    raise ValueError(
        "BPDA on named layers is not supported on a model holding an "
        "AdversarialTransform (its white-box attacks differentiate through "
        "the transform's estimators only). Received: "
        f"bpda={list(bpda)!r}")
  if find_transforms(model):
    notes.extend(
        f"Layer {path} ({why}) is not wrapped with BPDA: on a model holding "
        "an AdversarialTransform only the transform gets a gradient "
        "estimator, so this layer's gradient reads as zero." for path, why in
        masked.items())
  elif bpda == "auto":
    layers = dict(bpda_lib.layer_paths(model))
    for path, why in masked.items():
      own = _own_backward(layers.get(path))
      if own:
        wrapped[path] = why + ", detected" + own
      elif path in layers and _keeps_shape(layers[path]):
        wrapped[path] = why + ", detected"
      elif path in layers:
        notes.append(f"Layer {path} ({why}) changes the shape of its input: "
                     "identity BPDA does not apply; wrap it with a surrogate "
                     "(attacks.bpda.bpda(layer, backward=...)).")
      else:
        notes.append(f"{path} ({why}) is not a layer of a functional or "
                     "Sequential graph, so it cannot be wrapped with BPDA.")
  elif bpda != "off":
    bpda_lib.wrap_layers(model, list(bpda))  # Raises for unknown names.
    paths = bpda_lib.layer_paths(model)
    named = {layer.name: layer for _, layer in paths} | dict(paths)
    wrapped = {name: masked.get(name, "named by the user") +
                     _own_backward(named[name]) for name in bpda}
  return ModelChecks(randomized=random, randomized_why=random_why,
                     replay_exact=exact, replay_why=exact_why,
                     masked_layers=masked, bpda_layers=wrapped,
                     notes=tuple(notes), whole_gradient=whole)


def _own_backward(layer):
  """`SURROGATE_NOTE` and the surrogate `layer` declares, or "" (None: "")."""
  surrogate = None if layer is None else bpda_lib.surrogate_of(layer)
  if surrogate is None:
    return ""
  return SURROGATE_NOTE + type(surrogate).__name__ + " (the layer's own)"


def _keeps_shape(layer):
  """Whether `layer`'s output has its input's shape (identity BPDA applies)."""
  try:
    return tuple(layer.input.shape) == tuple(layer.output.shape)
  except (AttributeError, ValueError):
    return False
