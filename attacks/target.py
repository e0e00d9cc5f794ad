"""The model under attack, as the attacks see it: `Target`.

Besides the model, a `Target` holds what attacks may use (surrogate models,
training images) and two facts about the model that
`attacks.model_checks.check_model` finds: whether it is random and which of
its layers white-box attacks differentiate through BPDA.
"""

import keras

from adv_layer.layer import find_transforms
from attacks import bpda
from attacks import model_fns

__all__ = ["NO_BPDA", "Target"]

# The estimator of the plain-gradient comparison attack on a model whose
# masked layers are wrapped with BPDA: the model's own gradients, a None
# gradient read as zero (`NO_BPDA_SPEC`).
NO_BPDA = "no_bpda"


class Target:
  """The model under attack and what attacks may use besides it.

  Two facts about the model shape the evaluation. `randomized`: repeated
  passes on the same images disagree (`attacks.detect.is_randomized`); the
  attacks then average gradients over draws (EOT), query attacks score
  candidates over draws and every image is scored with R draws. `bpda_layers`:
  layers whose input gradient is None, zero or not finite
  (`attacks.detect.masked_layers`); white-box attacks then differentiate a
  copy of the model in which each is wrapped with identity BPDA
  (`attacks.bpda.wrap_layers`), and one plain-gradient attack stays in the
  list for comparison. This package's `AdversarialTransform` has its own
  gradient estimators (`attacks.estimators`) and is never wrapped.

  Args:
    model: the Keras model under attack (defended or plain), logits out.
    surrogate: an independently trained Keras model for black-box transfer
      (e.g. `surrogates.surrogate_from_defended`: f_a's architecture trained
      on clean data), or None.
    train_images: training images for the reparameterization attack, or None.
    adversarial_surrogate: an independently, adversarially trained model for
      black-box transfer, or None.
    randomized: whether the model's outputs are random; None: whether it
      contains an `AdversarialTransform` (`attacks.evaluation` detects it
      from the model's behaviour).
    bpda_layers: names (nested paths, `attacks.bpda.layer_paths`) of the
      layers white-box attacks differentiate through identity BPDA.
  """

  def __init__(self, model, surrogate=None, train_images=None,
               adversarial_surrogate=None, randomized=None, bpda_layers=()):
    if not isinstance(model, keras.Model):
      raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
    self.model = model
    self.surrogate = surrogate
    self.adversarial_surrogate = adversarial_surrogate
    self.train_images = train_images
    self.transforms = find_transforms(model)
    self.randomized = (bool(self.transforms) if randomized is None
                       else bool(randomized))
    self.bpda_layers = tuple(bpda_layers)
    self._wrapped = None

  @property
  def defended(self):
    """Whether the model contains an `AdversarialTransform`."""
    return bool(self.transforms)

  def forward_fn(self):
    """The model as a query oracle: a fresh draw of its randomness per call."""
    return lambda images: self.model(images, training=False)

  def gradient_model(self, estimator=None):
    """The model white-box attacks differentiate (not for a transform's).

    Args:
      estimator: None (BPDA on `bpda_layers`) or `NO_BPDA` (the model's own
        gradients: the shared gradient path, `attacks.common`, reads a None
        gradient as zero and zeroes non-finite entries).

    Returns:
      `model` itself when no layer is wrapped or for `NO_BPDA`, else a copy
      sharing its weights (built once).
    """
    if not self.bpda_layers or estimator == NO_BPDA:
      return self.model
    if self._wrapped is None:
      self._wrapped = bpda.wrap_layers(self.model, self.bpda_layers)
    return self._wrapped

  def models(self):
    """Every model object the attacks call (for counting passes)."""
    return [self.model] + ([] if self._wrapped is None else [self._wrapped])

  def white_box_fn(self, estimator, seed=None, **estimator_kwargs):
    """A differentiable model_fn: through `estimator` if defended, else direct.

    On a model without `AdversarialTransform` the model is differentiated
    directly, through BPDA on `bpda_layers` (`gradient_model`).
    """
    if not self.defended:
      model = self.gradient_model(NO_BPDA if estimator == NO_BPDA else None)
      return lambda images: model(images, training=False)
    return model_fns.defended_model_fn(self.model, estimator, seed=seed,
                                        **estimator_kwargs)
