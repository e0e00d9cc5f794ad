"""attacks.defenses: defenses from the literature and their leaderboard.

Defenses that RobustBench does not rank (randomized, preprocessing and
non-differentiable ones), as Keras layers and model builders, evaluated by
`attacks.evaluation` under one protocol:

  layers          input-preprocessing layers (Xie et al., Guo et al., Xu et
                  al., Buckman et al., Gaussian noise).
  stochastic      randomness inside the network: SAP (Dhillon et al.) and
                  the noise ensemble of randomized smoothing (Cohen et al.).
  builders        defended models from a classifier (in front, inside,
                  around).
  noise_training  training a classifier on Gaussian-noise-augmented images,
                  or on thermometer codes.
  catalog         the leaderboard's entries, as data.
  protocol        the leaderboard protocol, and the command of one entry.
  table           the leaderboard (JSON, Markdown, plot) from finished
                  reports.

Importing the package registers every layer for `keras.saving.load_model`
(under "attacks.defenses" and, for the older layers, "examples.defenses").
"""

from attacks.defenses import builders
from attacks.defenses import layers
from attacks.defenses import stochastic
from attacks.defenses.layers import BitDepthJpeg
from attacks.defenses.layers import FeatureSqueeze
from attacks.defenses.layers import GaussianNoise
from attacks.defenses.layers import ImageDefense
from attacks.defenses.layers import Jpeg
from attacks.defenses.layers import MedianSmoothing
from attacks.defenses.layers import RandomResizePad
from attacks.defenses.layers import SoftThermometer
from attacks.defenses.layers import ThermometerEncoding
from attacks.defenses.stochastic import MeanSoftmax
from attacks.defenses.stochastic import NoiseDraws
from attacks.defenses.stochastic import StochasticActivationPruning

__all__ = [
    "BitDepthJpeg", "FeatureSqueeze", "GaussianNoise", "ImageDefense",
    "Jpeg", "MeanSoftmax", "MedianSmoothing", "NoiseDraws", "RandomResizePad",
    "SoftThermometer", "StochasticActivationPruning", "ThermometerEncoding",
    "builders", "layers", "stochastic",
]
