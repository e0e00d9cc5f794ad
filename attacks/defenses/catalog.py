r"""The leaderboard's entries: one defense each, as data.

An `Entry` says what is evaluated (a published model, or a builder applied to
a classifier), where it comes from (paper, link, venue), what its authors
claimed and what a published adaptive attack measured (each figure with its
source, threat model and dataset, since many were published on ImageNet or
at another ε), whether it is randomized, and any budget it must run below
the protocol's. `examples/leaderboard.py --entry=NAME` builds and evaluates
it under `attacks.defenses.protocol.PROTOCOL`; adding a defense is one more
`Entry` (here, or in a JSON catalog passed with `--catalog`) and that
command.

A figure is a `Figure`: `value` in percent, or None where no figure is
published or it could not be checked ("unverified" in `source`).

Sources of the figures below:
  Athalye, Carlini, Wagner, "Obfuscated gradients give a false sense of
    security", ICML 2018, Table 1 (checked against the table as the
    authors' repository reproduces it): Guo et al. 0% (ImageNet, L2
    0.005), Dhillon et al. 0% (CIFAR-10, L∞ 0.031), Xie et al. 0%
    (ImageNet, L∞ 0.031), Buckman et al. 0% (CIFAR-10, L∞ 0.031, the
    encoding without adversarial training), Madry et al. 47% (CIFAR-10,
    L∞ 0.031).
  Xiao & Zheng, CVPR 2020, Table 3 (as `examples/reproduction/reference.py`
    records it): 73.4% against their strongest attack (transfer) and 80.2%
    under BPDA, CIFAR-10, L∞ 8/255; Madry et al.'s model 42.7% under PGD.
"""

import dataclasses
import importlib
import re

from attacks.defenses import builders

__all__ = ["CPU_RANDOMIZED", "ENTRIES", "Entry", "Figure", "KINDS", "by_name",
           "from_dict"]

# What kind of defense an entry is (the table groups nothing by it; it says
# why RobustBench does not rank the entry).
KINDS = (
    "baseline",
    "adversarial training",
    "test-time optimization",
    "random preprocessing",
    "non-differentiable preprocessing",
    "randomness inside the network",
    "randomized smoothing (trained on noise)",
    "differentiable preprocessing",
)
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
UNVERIFIED = "unverified"


@dataclasses.dataclass(frozen=True)
class Figure:
  """A published robust accuracy and where it comes from.

  Attributes:
    value: accuracy in percent, or None (no figure, or not checked).
    source: paper, table or section; "unverified" when not checked.
    threat_model: e.g. "Linf 8/255", "L2 0.005", "FGSM".
    dataset: e.g. "CIFAR-10", "ImageNet".
    note: what makes the figure differ from this leaderboard's setting.
  """
  value: object = None
  source: str = UNVERIFIED
  threat_model: str = ""
  dataset: str = ""
  note: str = ""

  def as_dict(self):
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One defense of the leaderboard.

  Exactly one of `model` (a model evaluated as it is: `zoo:NAME` or a
  `.keras` path) and `builder` (`"module:function"`, called as
  `function(classifier=..., seed=..., **builder_kwargs)` on the loaded
  `classifier`) says what is attacked. `command`, when given, is the literal
  `examples/attack_eval.py` command line that made (or makes) the entry's
  report, with `{report_dir}` where its folder goes; otherwise the command
  is the protocol's with `overrides`.

  Attributes:
    name: identifier, lower case and underscores (the report folder).
    title: the name the table shows.
    paper: citation (authors, title, venue and year).
    link: URL of the paper.
    venue: where it was published.
    kind: one of `KINDS`.
    randomized: whether the defense is random as published.
    classifier: the classifier it defends: a zoo name
      (`adv_layer.zoo.available()`) or a `.keras` path.
    architecture: the classifier's architecture.
    claimed: the authors' claimed robust accuracy (`Figure`).
    published_adaptive: a published adaptive attack's result (`Figure`).
    model: `zoo:NAME` or a path evaluated directly, or None.
    builder: `"module:function"` building the defended model, or None.
    builder_kwargs: the builder's keyword arguments (the published
      settings).
    imports: modules attack_eval must import to load the model
      (`--import`).
    surrogate: the black-box transfer surrogate (`--surrogate`), or None.
    adversarial_surrogate: `--adversarial_surrogate`, or None.
    overrides: attack_eval flags replacing the protocol's (a reduced budget
      the machine can afford; the row then states each shortfall).
    command: the literal command template, or None.
    train_command: the command that trains `classifier`, if it is not
      published.
    number_forward_passes: classifier passes per prediction.
    footnote: anything else a reader must know.
  """
  name: str
  title: str
  paper: str
  link: str
  venue: str
  kind: str
  randomized: bool
  classifier: str
  architecture: str
  claimed: Figure
  published_adaptive: Figure
  model: object = None
  builder: object = None
  builder_kwargs: dict = dataclasses.field(default_factory=dict)
  imports: tuple = ()
  surrogate: object = None
  adversarial_surrogate: object = None
  overrides: dict = dataclasses.field(default_factory=dict)
  command: object = None
  train_command: object = None
  number_forward_passes: int = 1
  footnote: str = ""

  def validate(self):
    """Raises ValueError naming the first bad field; returns the entry."""
    if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
      raise ValueError("An entry name is lower case letters, digits and "
                       f"underscores. Received: name={self.name!r}")
    for field in ("title", "paper", "link", "venue", "classifier",
                  "architecture"):
      if not isinstance(getattr(self, field), str) or not getattr(
          self, field):
        raise ValueError(f"Entry {self.name!r} needs a non-empty {field}. "
                         f"Received: {field}={getattr(self, field)!r}")
    if self.kind not in KINDS:
      raise ValueError(f"Entry {self.name!r}: kind must be one of {KINDS}. "
                       f"Received: kind={self.kind!r}")
    if not isinstance(self.randomized, bool):
      raise ValueError(f"Entry {self.name!r}: randomized is True or False. "
                       f"Received: randomized={self.randomized!r}")
    if (self.model is None) == (self.builder is None):
      raise ValueError(f"Entry {self.name!r} needs exactly one of model and "
                       f"builder. Received: model={self.model!r}, "
                       f"builder={self.builder!r}")
    if self.builder is not None and (not isinstance(self.builder, str) or
                                     ":" not in self.builder):
      raise ValueError(f"Entry {self.name!r}: builder is 'module:function'. "
                       f"Received: builder={self.builder!r}")
    for field in ("claimed", "published_adaptive"):
      figure = getattr(self, field)
      if not isinstance(figure, Figure) or not figure.source:
        raise ValueError(f"Entry {self.name!r}: {field} needs a Figure with "
                         f"a source. Received: {field}={figure!r}")
      if figure.value is not None and not 0 <= figure.value <= 100:
        raise ValueError(f"Entry {self.name!r}: {field} is a percentage. "
                         f"Received: {field}.value={figure.value!r}")
    if self.command is not None and "{report_dir}" not in self.command:
      raise ValueError(f"Entry {self.name!r}: command must hold "
                       "{report_dir}. Received: "
                       f"command={self.command!r}")
    return self

  def builder_function(self):
    """The builder, imported from its `"module:function"`.

    Raises:
      ValueError: for an entry without builder or a missing function.
      ImportError: for a module that does not import.
    """
    if self.builder is None:
      raise ValueError(f"Entry {self.name!r} has no builder. Received: "
                       "builder=None")
    module, _, function = self.builder.partition(":")
    found = getattr(importlib.import_module(module), function, None)
    if not callable(found):
      raise ValueError(f"Entry {self.name!r}: {module} has no function "
                       f"{function!r}. Received: builder={self.builder!r}")
    return found

  def build_model(self, seed=0):
    """The defended model: the builder applied to the loaded classifier."""
    classifier = builders.load_classifier(self.classifier_spec())
    return self.builder_function()(classifier=classifier, seed=seed,
                                   **self.builder_kwargs)

  def classifier_spec(self):
    """The classifier as a model flag takes it: `zoo:NAME` or a path."""
    if self.classifier.endswith(".keras"):
      return self.classifier
    return "zoo:" + self.classifier

  def as_dict(self):
    """The entry as JSON-ready data (`from_dict` reads it back)."""
    return dataclasses.asdict(self)


def from_dict(data):
  """An `Entry` from a dict (a JSON catalog's item), validated.

  Raises:
    ValueError: for unknown or missing keys, or a bad field.
  """
  fields = {f.name for f in dataclasses.fields(Entry)}
  unknown = sorted(set(data) - fields)
  if unknown:
    raise ValueError(f"Unknown entry keys; expected some of {sorted(fields)}."
                     f" Received: keys={unknown}")
  values = dict(data)
  for key in ("claimed", "published_adaptive"):
    if isinstance(values.get(key), dict):
      values[key] = Figure(**values[key])
  if isinstance(values.get("imports"), list):
    values["imports"] = tuple(values["imports"])
  try:
    entry = Entry(**values)
  except TypeError as error:
    raise ValueError(f"An entry misses a required key ({error}). Received: "
                     f"keys={sorted(data)}") from None
  return entry.validate()


CIFAR10 = "CIFAR-10"
RESNET18 = "ResNet18 (half width, this package's strong_cpu preset)"
UNDEFENDED = "cifar10/resnet18_undefended"
MADRY = "cifar10/resnet18_madry"
ATHALYE = ("Athalye, Carlini, Wagner, ICML 2018, Table 1")
THERMOMETER_MODEL = "runs/leaderboard/models/thermometer.keras"
# The background evaluations of the three published models (their exact
# command lines).
_BASELINE_ATTACKS = ("pgd_restarts_bpda_identity,apgd_ce_bpda_identity,"
                     "apgd_dlr_t_bpda_identity,straight_through_eot")
_BASELINE_COMMAND = (
    "python examples/attack_eval.py --model=zoo:{model} "
    f"--attacks={_BASELINE_ATTACKS} --num_examples=100 --sanity_images=100 "
    "--seed=0 --eot_curve= --report_dir={{report_dir}}")

# The budget two CPU cores afford for a randomized entry in one session
# (measured: an EOT-4, 20-step unit of a ResNet18 on 100 images takes about
# as long as a 100-step unit of a deterministic one). The report lists each
# field below the reference and the verdict is UPPER BOUND; a run at the
# protocol's full budget drops these overrides.
CPU_RANDOMIZED = {"steps": 20, "eot_samples": 4, "queries": 1000,
                  "query_draws": 2, "sanity_images": 50}

ENTRIES = (
    Entry(
        name="undefended", title="No defense (baseline)",
        paper="Standard training (no defense)", link="-", venue="-",
        kind="baseline", randomized=False, classifier=UNDEFENDED,
        architecture=RESNET18, model="zoo:" + UNDEFENDED,
        claimed=Figure(None, "no claim"),
        published_adaptive=Figure(None, "no published attack on this model"),
        command=_BASELINE_COMMAND.format(model=UNDEFENDED),
        footnote="Deterministic: RobustBench could rank it; a reference "
        "row."),
    Entry(
        name="madry", title="Adversarial training (Madry et al.)",
        paper="Madry, Makelov, Schmidt, Tsipras, Vladu, \"Towards deep "
        "learning models resistant to adversarial attacks\", ICLR 2018",
        link="https://arxiv.org/abs/1706.06083", venue="ICLR 2018",
        kind="adversarial training", randomized=False, classifier=MADRY,
        architecture=RESNET18 + ", FGSM-RS adversarial training",
        model="zoo:" + MADRY,
        claimed=Figure(42.7, "Xiao & Zheng, CVPR 2020, Table 3 (their "
                       "Madry et al. baseline under PGD)", "Linf 8/255",
                       CIFAR10, "their model, not this package's"),
        published_adaptive=Figure(47.0, ATHALYE, "Linf 0.031", CIFAR10,
                                  "Madry et al.'s own wide ResNet"),
        command=_BASELINE_COMMAND.format(model=MADRY),
        footnote="This package's FGSM-RS-trained ResNet18 (fewer epochs "
        "than Madry et al.'s PGD-7 training); deterministic."),
    Entry(
        name="defended",
        title="Adversarial examples against adversarial examples "
        "(Xiao & Zheng)",
        paper="Xiao, Zheng, \"One Man's Trash is Another Man's Treasure: "
        "Resisting Adversarial Examples by Adversarial Examples\", CVPR "
        "2020", link="-", venue="CVPR 2020",
        kind="test-time optimization", randomized=True,
        classifier="cifar10/defended_resnet18",
        architecture=RESNET18 + " f_a behind g (LL-PGD on a small VGG f_b)",
        model="zoo:cifar10/defended_resnet18",
        surrogate="zoo:" + UNDEFENDED,
        claimed=Figure(73.4, "Xiao & Zheng, CVPR 2020, Table 3 (worst "
                       "attack: transfer; 80.2 under BPDA)", "Linf 8/255",
                       CIFAR10),
        published_adaptive=Figure(None, "unverified: no published adaptive "
                                  "attack found"),
        command=(
            "python examples/attack_eval.py "
            "--model=zoo:cifar10/defended_resnet18 "
            "--surrogate=zoo:cifar10/resnet18_undefended "
            "--attacks=apgd_ce_bpda_identity,apgd_dlr_bpda_identity,"
            "whitebox_transfer,blackbox_transfer,"
            "apgd_ce_expected_bpda_identity,"
            "pgd_expected_margin_bpda_identity,pgd_restarts_bpda_identity "
            "--num_examples=100 --sanity_images=50 --seed=0 --steps=20 "
            "--eot_samples=4 --draws=20 --eot_curve= "
            "--report_dir={report_dir}"),
        number_forward_passes=14,
        footnote="g runs 13 LL-PGD steps of f_b per prediction (14 f_b "
        "passes and one f_a pass)."),
    Entry(
        name="random_resize_pad", title="Random resizing and padding",
        paper="Xie, Wang, Zhang, Ren, Yuille, \"Mitigating adversarial "
        "effects through randomization\", ICLR 2018",
        link="https://arxiv.org/abs/1711.01991", venue="ICLR 2018",
        kind="random preprocessing", randomized=True, classifier=UNDEFENDED,
        architecture=RESNET18, builder="attacks.defenses.builders:build",
        builder_kwargs={"name": "random_resize_pad"},
        overrides=CPU_RANDOMIZED, surrogate="zoo:" + UNDEFENDED,
        claimed=Figure(None, "unverified", "", "ImageNet",
                       "claims are on ImageNet with an ensemble-"
                       "adversarially-trained Inception-ResNet"),
        published_adaptive=Figure(0.0, ATHALYE + " (EOT)", "Linf 0.031",
                                  "ImageNet", "other dataset"),
        footnote="The paper's 299 -> [299, 331) resizing scaled to 32 x 32: "
        "r in {29, 30, 31}, zero padding."),
    Entry(
        name="bit_depth_jpeg", title="Bit-depth reduction + JPEG",
        paper="Guo, Rana, Cisse, van der Maaten, \"Countering adversarial "
        "images using input transformations\", ICLR 2018",
        link="https://arxiv.org/abs/1711.00117", venue="ICLR 2018",
        kind="non-differentiable preprocessing", randomized=False,
        classifier=UNDEFENDED, architecture=RESNET18,
        builder="attacks.defenses.builders:build",
        builder_kwargs={"name": "bit_depth_jpeg"},
        surrogate="zoo:" + UNDEFENDED,
        claimed=Figure(None, "unverified", "", "ImageNet",
                       "gray-box and black-box claims on ImageNet"),
        published_adaptive=Figure(0.0, ATHALYE + " (BPDA)", "L2 0.005",
                                  "ImageNet",
                                  "other dataset and threat model"),
        footnote="Two of Guo et al.'s transformations chained (3 bits, "
        "JPEG quality 75, Athalye et al.'s settings)."),
    Entry(
        name="jpeg", title="JPEG compression (quality 75)",
        paper="Dziugaite, Ghahramani, Roy, \"A study of the effect of JPG "
        "compression on adversarial images\", arXiv 2016; proposed as a "
        "defense by Das et al., \"Keeping the bad guys out: protecting and "
        "vaccinating deep learning with JPEG compression\", arXiv 2017",
        link="https://arxiv.org/abs/1608.00853", venue="arXiv 2016",
        kind="non-differentiable preprocessing", randomized=False,
        classifier=UNDEFENDED, architecture=RESNET18,
        builder="attacks.defenses.builders:build",
        builder_kwargs={"name": "jpeg", "quality": 75},
        surrogate="zoo:" + UNDEFENDED,
        claimed=Figure(None, "unverified", "FGSM", "",
                       "the papers report recovery from FGSM examples, not "
                       "accuracy under an iterative attack at 8/255"),
        published_adaptive=Figure(None, "unverified (Shin & Song, 2017, "
                                  "craft JPEG-resistant examples; Athalye "
                                  "et al. break Guo et al.'s JPEG with BPDA "
                                  "on ImageNet)", "", ""),
        footnote="JPEG alone at quality 75 (Guo et al.'s and Athalye et "
        "al.'s level), without Das et al.'s retraining on compressed "
        "images."),
    Entry(
        name="gaussian_noise", title="Gaussian noise on the input",
        paper="Textbook randomized defense (no single paper)", link="-",
        venue="-", kind="random preprocessing", randomized=True,
        classifier=UNDEFENDED, architecture=RESNET18,
        builder="attacks.defenses.builders:build",
        builder_kwargs={"name": "gaussian_noise", "sigma": 0.03},
        overrides=CPU_RANDOMIZED, surrogate="zoo:" + UNDEFENDED,
        claimed=Figure(None, "no claim"),
        published_adaptive=Figure(None, "no published attack on this "
                                  "setting; EOT is the textbook answer"),
        footnote="sigma 0.03, the largest that keeps the clean accuracy "
        "within 1.5 points."),
    Entry(
        name="sap", title="Stochastic activation pruning (SAP-100)",
        paper="Dhillon, Azizzadenesheli, Lipton, Bernstein, Kossaifi, "
        "Khanna, Anandkumar, \"Stochastic activation pruning for robust "
        "adversarial defense\", ICLR 2018",
        link="https://arxiv.org/abs/1803.01442", venue="ICLR 2018",
        kind="randomness inside the network", randomized=True,
        classifier=UNDEFENDED, architecture=RESNET18 + ", SAP after each of "
        "its 17 ReLUs",
        builder="attacks.defenses.builders:with_activation_pruning",
        builder_kwargs={"ratio": 1.0}, overrides=CPU_RANDOMIZED,
        surrogate="zoo:" + UNDEFENDED,
        claimed=Figure(None, "unverified", "FGSM", CIFAR10,
                       "the paper reports accuracy against single-step "
                       "FGSM, not an iterative attack at 8/255"),
        published_adaptive=Figure(0.0, ATHALYE + " (EOT)", "Linf 0.031",
                                  CIFAR10, "same threat model (0.031 = "
                                  "8/255)")),
    Entry(
        name="feature_squeeze",
        title="Feature squeezing (5-bit depth + 2x2 median)",
        paper="Xu, Evans, Qi, \"Feature squeezing: detecting adversarial "
        "examples in deep neural networks\", NDSS 2018",
        link="https://arxiv.org/abs/1704.01155", venue="NDSS 2018",
        kind="non-differentiable preprocessing", randomized=False,
        classifier=UNDEFENDED, architecture=RESNET18,
        builder="attacks.defenses.builders:build",
        builder_kwargs={"name": "feature_squeeze", "bits": 5,
                        "median_size": 2},
        surrogate="zoo:" + UNDEFENDED,
        claimed=Figure(None, "unverified", "", CIFAR10,
                       "a detector in the paper; here the squeezed input "
                       "is classified (no detection)"),
        published_adaptive=Figure(None, "unverified (He, Wei, Chen, Carlini,"
                                  " Song, WOOT 2017, adapt attacks to the "
                                  "squeezers)", "", "")),
    Entry(
        name="median_smoothing", title="Spatial smoothing (2x2 median)",
        paper="Xu, Evans, Qi, \"Feature squeezing: detecting adversarial "
        "examples in deep neural networks\", NDSS 2018",
        link="https://arxiv.org/abs/1704.01155", venue="NDSS 2018",
        kind="differentiable preprocessing", randomized=False,
        classifier=UNDEFENDED, architecture=RESNET18,
        builder="attacks.defenses.builders:build",
        builder_kwargs={"name": "median_smoothing", "size": 2},
        surrogate="zoo:" + UNDEFENDED,
        claimed=Figure(None, "unverified", "", CIFAR10,
                       "a squeezer of a detector in the paper; here the "
                       "smoothed input is classified (no detection)"),
        published_adaptive=Figure(None, "unverified (He, Wei, Chen, Carlini,"
                                  " Song, WOOT 2017, adapt attacks to the "
                                  "squeezers)", "", ""),
        footnote="The median alone, Xu et al.'s CIFAR-10 window: piecewise "
        "linear, its gradient exists almost everywhere (no BPDA needed), "
        "unlike the feature_squeeze row, which adds a 5-bit reduction."),
    Entry(
        name="thermometer", title="Thermometer encoding (16 levels)",
        paper="Buckman, Roy, Raffel, Goodfellow, \"Thermometer encoding: "
        "one hot way to resist adversarial examples\", ICLR 2018",
        link="https://openreview.net/forum?id=S18Su--CW", venue="ICLR 2018",
        kind="non-differentiable preprocessing", randomized=False,
        classifier=THERMOMETER_MODEL,
        architecture="small CNN (width 32) on 16-level thermometer codes "
        "(Buckman et al.: a wide ResNet)",
        model=THERMOMETER_MODEL, imports=("attacks.defenses",),
        surrogate="zoo:" + UNDEFENDED,
        claimed=Figure(None, "unverified: the abstract reports 79.16% "
                       "under the strongest known white-box attack (against "
                       "50.00% before); which of the paper's models, with or "
                       "without adversarial training, was not checked",
                       "Linf 0.031", CIFAR10,
                       "the paper's figures are for its own wide ResNet"),
        published_adaptive=Figure(0.0, ATHALYE + " (BPDA)", "Linf 0.031",
                                  CIFAR10, "the encoding alone (Buckman et "
                                  "al. also propose adversarial "
                                  "training); same threat model"),
        train_command=(
            "python examples/train_thermometer.py --preset=cpu --epochs=6 "
            "--train_examples=50000 --levels=16 "
            f"--output={THERMOMETER_MODEL}"),
        footnote="Trained here without adversarial training (the setting "
        "of Athalye et al.'s 0%); the encoding has no input gradient and "
        "changes the shape, so the evaluation differentiates the soft "
        "thermometer Athalye et al. use (the layer declares it)."),
    Entry(
        name="randomized_smoothing",
        title="Gaussian-augmented classifier, smoothed (sigma 0.25)",
        paper="Cohen, Rosenfeld, Kolter, \"Certified adversarial "
        "robustness via randomized smoothing\", ICML 2019",
        link="https://arxiv.org/abs/1902.02918", venue="ICML 2019",
        kind="randomized smoothing (trained on noise)", randomized=True,
        classifier="runs/leaderboard/models/noise_augmented.keras",
        architecture="small CNN (width 32) trained on N(0, 0.25^2)-noisy "
        "images (Cohen et al.: ResNet-110)",
        builder="attacks.defenses.builders:smoothed",
        builder_kwargs={"sigma": 0.25, "draws": 8},
        overrides=CPU_RANDOMIZED, surrogate="zoo:" + UNDEFENDED,
        claimed=Figure(None, "unverified", "L2 certificate", CIFAR10,
                       "certified L2 accuracy; no L∞ 8/255 claim"),
        published_adaptive=Figure(None, "unverified: no adaptive attack at "
                                  "L∞ 8/255 found"),
        train_command=(
            "python examples/train_noise_augmented.py --preset=cpu "
            "--sigma=0.25 "
            "--output=runs/leaderboard/models/noise_augmented.keras"),
        number_forward_passes=8,
        footnote="Mean softmax over 8 draws (Cohen et al. predict by a "
        "vote over 100 draws, with abstention; 100 draws make a gradient "
        "13x a ResNet18's here, and the dry run put 16 draws at 1.8 h on "
        "the shared cores): fewer draws make each prediction noisier, so "
        "the strict figure is below what 100 draws would give."),
)


def by_name(name, entries=ENTRIES):
  """The entry called `name`.

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  for entry in entries:
    if entry.name == name:
      return entry
  raise ValueError(f"Unknown leaderboard entry; known: "
                   f"{[e.name for e in entries]}. Received: entry={name!r}")
