"""adv_layer: the adversarial-transformation defense (Xiao & Zheng, CVPR 2020) for Keras.

Modules:
  transform  the pure LL-PGD procedure g(x) (`ll_pgd`), paper eqs. (2)-(3).
  layer      `AdversarialTransform`, the Keras layer that wraps a frozen f_b.
  models     f_b / f_a builders (`small_vgg`, `resnet18`, `small_cnn`).
  data       tfds and image-folder pipelines, float images in [0, 1].
  training   f_b pretraining (standard or PGD), defended training, presets.
  gcache     K cached draws of g for cheaper training of f_a.
  zoo        published models by name, with model cards.
  folding    f_b's batch norm folded into its convolutions (`LiveFold`).

Importing it checks first that TensorFlow (>= 2.16) is installed: install
the package from a clone with `pip install -e '.[cpu]'` or
`pip install -e '.[and-cuda]'` to get one (it is not on PyPI).
"""

from adv_layer import _tf_check  # pylint: disable=unused-import
from adv_layer import data
from adv_layer import folding
from adv_layer import gcache
from adv_layer import models
from adv_layer import training
from adv_layer import zoo
from adv_layer.layer import AdversarialTransform
from adv_layer.layer import find_transforms
from adv_layer.layer import pinned_draws
from adv_layer.transform import ll_pgd
from adv_layer.version import __version__
