"""adv_layer: the adversarial-transformation defense (Xiao & Zheng, CVPR 2020) for Keras."""

from adv_layer.layer import AdversarialTransform
from adv_layer.layer import find_transforms
from adv_layer.transform import ll_pgd
from adv_layer.version import __version__
