r"""Worst-case robustness report of a Keras classifier, defended or not.

Runs the attack suite of `attacks.suite` (Xiao & Zheng, CVPR 2020, Sec. 4, plus
adaptive attacks) on the first test images, scores every adversarial image
with fresh draws of the model, runs the sanity checks of `attacks.sanity` and
writes report.json, report.md and PNG plots into --report_dir. For a model
containing `AdversarialTransform` the white-box attacks go through BPDA,
BPDA-I and EOT; for a plain classifier they run on the model directly.

The budget defaults to the reference (`--budget=reference`, see
`attacks.suite.BUDGET_PRESETS`): AutoAttack's `rand` version (100 steps, EOT 20,
1 restart), Square with 5,000 queries, 8 draws per query, R = 20 scoring draws,
the 10,000 test images. `--budget=smoke` is the cheap CI and demo size; any of
--steps, --eot_samples, --restarts, --queries, --query_draws, --draws and
--num_examples overrides its preset. Every report opens with each way its
budget falls below the reference.

An attack that raises makes the verdict INCOMPLETE: the other attacks still
run and the report is written, then the program exits with status 1 unless
--keep_going is given.

At scale (`attacks.runner`): the evaluation is a set of units (attack ×
block of --unit_size images), each seeded by its block and written to
--report_dir/units/ when finished, so rerunning the same command resumes
(a kill loses at most the unit in flight; another model, seed, R or image
set in the same folder is refused, and so is a change of a budget field that
a finished attack used). A rerun may add attacks to --attacks and keeps the
finished units: start with the strongest attacks on every image, add the
rest of a list later, with budget fields only the new attacks use (e.g.
--queries for Square after gradient attacks) set as you need.
--num_shards=N --shard_index=i runs one slice of the blocks and stops; once
all shards are done,
--merge_only builds the one report, identical to a single process's. The
report's extra runs (sanity reruns, the EOT curve) are kept in
--report_dir/reruns/ as well: a killed report build, or the report of an
evaluation grown by more attacks, reuses them.
--dry_run prints the cost (f_b and model passes, FLOPs, time measured on
this machine, wall time spread over the shards and devices) and stops.
Besides report.json/md and plots, the report folder gets robustbench.json and
adversarial.npz (every adversarial image with its seeds), from which
--replay_attack=NAME --replay_example=K reproduces one result exactly.

On a host with 4 GPUs: one process, `--strategy=mirrored` (one model copy
and one thread per GPU, each taking the next unit); or 4 processes,
`CUDA_VISIBLE_DEVICES=$i python examples/attack_eval.py ... --num_shards=4
--shard_index=$i &`, then one `--merge_only`. On a cluster driven by
tf.distribute: the same command on every worker with `TF_CONFIG` and
`--strategy=multi_worker` (each worker one shard on all its devices; the
chief writes the report once every worker has finished). As a Slurm array
job: `#SBATCH --array=0-15` with --num_shards=16
--shard_index=$SLURM_ARRAY_TASK_ID on a shared --report_dir, then
--merge_only in a job with `--dependency=afterok:<array job id>` (a
Kubernetes indexed Job: --shard_index=$JOB_COMPLETION_INDEX). A preempted
task reruns its command and skips its finished units. Train or pass the
surrogates before starting shards (they are saved in --report_dir and reused).

Example (after `python examples/train_cifar10.py --preset=smoke`):

  python examples/attack_eval.py --model=runs/smoke/defended.keras \
      --attacks=adaptive --budget=smoke --num_examples=100 --steps=20

`--model=zoo:NAME` attacks a published model (`adv_layer.zoo.available()`).

Any Keras model: `--import=my_pkg.defenses` (repeatable) imports the module
that registers its custom layers before loading. Randomness is detected (two
inference passes disagree; `--randomized=yes|no` forces it) and gets EOT,
query draws, R scoring draws and the EOT curve; a layer whose input gradient
is None, zero or not finite is wrapped with identity BPDA for the white-box
attacks (`--bpda_layers` names them, `--nobpda` turns it off), and the
report states both (`attacks.model_checks.check_model`). This program is a
shell over `attacks.evaluation`, which does the same from Python.

Prints the report's path, then the verdict, the budget against the
reference, the table (like the paper's Table 3) with 95% intervals, the
sanity flags, and last one line with the verdict state and the worst-case
robust accuracy. Exit status, one per state (`attacks.verdict`): 0 COMPLETE
(reference budget, convergence shown, no masking sign), 4 UPPER BOUND (every
attack ran, but below the reference or without convergence shown), 2
SUSPECT (a sign of gradient masking tripped), 1 INCOMPLETE (an attack
raised; 0 with --keep_going), 3 bad input (one line naming the flag;
--verbose_errors also prints the traceback).
"""

import os

# oneDNN kernels roughly double conv speed on this project's CPUs (AVX2, no
# AVX-512), where TensorFlow leaves them off by default; set before TF loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import functools
import json
import sys
import time
import traceback

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf
import tqdm

import adv_layer  # Registers AdversarialTransform for load_model.
from adv_layer import data
from adv_layer import training
from attacks import budgets
from attacks import common
from attacks import cost
from attacks import distributed
from attacks import evaluation
from attacks import export
from attacks import model_checks
from attacks import plan as plan_lib
from attacks import preflight
from attacks import suite
from attacks import surrogates

FLAGS = flags.FLAGS
OVERRIDES = budgets.OVERRIDES
make_budget = budgets.make_budget
exit_status = evaluation.exit_status
load_model = preflight.load_model
# Exit status of a bad flag or input (one line on stderr).
BAD_INPUT_STATUS = 3


def define_flags():
  """Defines the program's flags (called before `app.run`)."""
  flags.DEFINE_string("model", None,
                      "The model to attack (logits out): a .keras path, or "
                      "zoo:NAME for a published model (adv_layer.zoo).")
  flags.DEFINE_string("surrogate", None,
                      "Model (.keras path or zoo:NAME) trained independently "
                      "on clean data, the source of black-box transfer "
                      "(default: trained here "
                      "for a defended model, see --train_surrogates).")
  flags.DEFINE_string("adversarial_surrogate", None,
                      "Model (.keras path or zoo:NAME) trained independently "
                      "with PGD, a source of black-box transfer (default: "
                      "trained here for a "
                      "defended model, see --train_surrogates).")
  flags.DEFINE_bool("train_surrogates", True,
                    "For a defended model, train each surrogate a planned "
                    "attack needs and none was given: f_a's architecture "
                    "with fresh weights, on clean data or with PGD "
                    "(attacks.surrogates.surrogate_from_defended), saved in "
                    "--report_dir.")
  flags.DEFINE_enum("surrogate_preset", "cpu", list(training.PRESETS),
                    "Training preset of the surrogates (f_a's schedule and "
                    "data; f_b's PGD settings for the adversarial one).")
  flags.DEFINE_list("attacks", ["adaptive"],
                    "Attack names and/or presets: " + ", ".join(suite.PRESETS) +
                    "; attacks: " + ", ".join(suite.REGISTRY))
  flags.DEFINE_string("epsilon", "8/255",
                      "L-inf budget on [0, 1] images, a number or a fraction.")
  flags.DEFINE_enum("budget", "reference", list(suite.BUDGET_PRESETS),
                    "Budget preset; the flags below override its fields.")
  flags.DEFINE_integer("num_examples", None, "Attack the first N test images "
                       "(default: the preset's).")
  flags.DEFINE_integer("eot_samples", None, "Draws of g averaged per gradient "
                       "(default: the preset's).")
  flags.DEFINE_integer("steps", None, "Iterations of gradient attacks "
                       "(default: the preset's).")
  flags.DEFINE_integer("restarts", None, "Random restarts of the attacks that "
                       "take them (default: the preset's).")
  flags.DEFINE_integer("queries", None, "Queries per image of query-based "
                       "attacks (default: the preset's).")
  flags.DEFINE_integer("query_draws", None, "Draws of the model averaged per "
                       "query by query attacks (default: the preset's).")
  flags.DEFINE_integer("chunk_size", None, "Most images per model call inside "
                       "an EOT step (default: chosen from a 2 GiB activation "
                       "budget, attacks.common.DEFAULT_MEMORY_BUDGET).")
  flags.DEFINE_integer("draws", None, "Draws of the model scoring each image "
                       "(default: the preset's).")
  flags.DEFINE_integer("seed", 0, "Seed of the attacks and the scoring draws.")
  flags.DEFINE_string("report_dir", "runs/attack_eval", "Output folder.")
  flags.DEFINE_string("dataset", "cifar10",
                      "tfds image classification dataset.")
  flags.DEFINE_string("split", "test", "tfds split the images come from.")
  flags.DEFINE_string("data_dir", None,
                      "tfds data directory (default: $TFDS_DATA_DIR, else "
                      "~/tensorflow_datasets).")
  flags.DEFINE_string("data_name", None,
                      "Name of the data in the report (default: 'CIFAR-10 "
                      "(JPEG copy)' for cifar10, else --dataset).")
  flags.DEFINE_integer("reparam_images", 2048,
                       "Training images for the reparameterization attack's h.")
  flags.DEFINE_list("eot_curve", ["1", "2", "4", "8"],
                    "EOT samples of the accuracy-vs-EOT plot (the strongest "
                    "EOT attack of the run; defended models only; empty: no "
                    "plot).")
  flags.DEFINE_integer("grid_images", 4, "Rows of the x / g(x) / E[g(x)] grid.")
  flags.DEFINE_integer("grid_samples", 32, "Draws averaged for E[g(x)].")
  flags.DEFINE_bool("convergence", True,
                    "Rerun the strongest white-box attack with 2x steps, 2x "
                    "restarts and (defended models) 2x EOT samples (the "
                    "convergence sanity checks).")
  flags.DEFINE_integer("sanity_images", None,
                       "Run the extra sanity runs (epsilon sweep, 2x reruns, "
                       "accuracy vs EOT samples) on the first N attacked "
                       "images only (all if N is larger; default: all); the "
                       "report says so.", lower_bound=1)
  flags.DEFINE_string("data_npz", None,
                      "An .npz with arrays x (float32 in [0, 1]) and y, used "
                      "instead of tfds (its first --num_examples images).")
  flags.DEFINE_string("model_name", None,
                      "Name of the model in robustbench.json (default: "
                      "--model).")
  flags.DEFINE_integer("unit_size", 100, "Images per unit of the evaluation.")
  flags.DEFINE_integer("num_shards", 1, "N: shards of the evaluation.")
  flags.DEFINE_integer("shard_index", 0, "The shard this process runs.")
  flags.DEFINE_integer("cpu_devices", None,
                       "Split the CPU into this many logical devices before "
                       "TensorFlow starts (so --strategy=mirrored can run on "
                       "a CPU host: tests, scaling measurements).")
  flags.DEFINE_enum("strategy", "default", list(training.STRATEGIES),
                    "tf.distribute strategy: 'mirrored' runs units on every "
                    "local device at once (one model copy and thread each); "
                    "'multi_worker' makes each worker of TF_CONFIG's cluster "
                    "one shard, and the chief writes the report once all "
                    "have finished.")
  flags.DEFINE_bool("merge_only", False,
                    "Build the report from the finished units of all shards.")
  flags.DEFINE_bool("dry_run", False,
                    "Print the estimated cost and stop (probes a few steps).")
  flags.DEFINE_integer("probe_images", None,
                       "Images per --dry_run probe (default: --unit_size). "
                       "Fewer probe faster; the seconds per image are then "
                       "overstated (less batching).", lower_bound=1)
  flags.DEFINE_string("replay_attack", None,
                      "Replay this attack's recorded result on "
                      "--replay_example from adversarial.npz, and stop.")
  flags.DEFINE_integer("replay_example", None, "Image index to replay.")
  flags.DEFINE_bool("recraft", False,
                    "With --replay_attack: also rerun the attack and compare "
                    "its images bit for bit.")
  flags.DEFINE_bool("keep_going", False,
                    "Exit with status 0 even if an attack raised. Either way "
                    "the other attacks run and the report (verdict "
                    "INCOMPLETE) is written; without this flag the exit status "
                    "is then 1.")
  flags.DEFINE_multi_string("import", [],
                            "Module to import before loading the model "
                            "(repeatable), e.g. my_pkg.defenses: it "
                            "registers the model's custom layers. The "
                            "current folder is importable.")
  flags.DEFINE_enum("randomized", "auto", list(model_checks.RANDOMIZED),
                    "Whether the model is random: auto detects it (two "
                    "inference passes disagree); yes/no force it.")
  flags.DEFINE_bool("bpda", True,
                    "Wrap the layers whose input gradient is None, zero or "
                    "not finite with identity BPDA for the white-box attacks.")
  flags.DEFINE_list("bpda_layers", None,
                    "Layer names (nested paths a/b) to wrap with identity "
                    "BPDA instead of the detected ones.")
  flags.DEFINE_bool("allow_large_epsilon", False,
                    "Accept an --epsilon of the whole value range or more "
                    "(e.g. a sanity run at 0.5 is fine without it).")
  flags.DEFINE_bool("verbose_errors", False,
                    "Print the traceback of a bad-input error, not one line.")
  flags.mark_flag_as_required("model")


def split_cpu(count):
  """Splits the CPU into `count` logical devices (before any TF op).

  Raises:
    ValueError: for a count below 1.
  """
  if count < 1:
    raise ValueError(f"`cpu_devices` must be at least 1. Received: "
                     f"cpu_devices={count}")
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def load_images(config, split, count):
  """The first `count` images of `split` (or of --data_npz), float32 [0, 1].

  Returns:
    `(x, y, num_classes)`; the classes of an .npz are those its labels show.
  """
  if config.data_npz and split == config.split:
    with np.load(config.data_npz) as arrays:
      if not {"x", "y"} <= set(arrays.files):
        raise ValueError(
            f"--data_npz={config.data_npz!r} must hold arrays named 'x' "
            "(images) and 'y' (labels). Received: arrays "
            f"{sorted(arrays.files)}")
      x, y = arrays["x"], arrays["y"]
    if count is not None and count > len(x):
      raise ValueError(
          f"--num_examples={count} asks for more images than "
          f"--data_npz={config.data_npz!r} holds ({len(x)}). Received: "
          f"num_examples={count}")
    return x[:count], y[:count], None
  preflight.check_num_examples(count, config.dataset, split, config.data_dir)
  x, y = data.load_arrays(config.dataset, f"{split}[:{count}]",
                          data_dir=config.data_dir)
  return x, y, data.dataset_spec(config.dataset, config.data_dir)[1]


def data_name(config):
  if config.data_name:
    return config.data_name
  if config.data_npz:
    return os.path.basename(config.data_npz)
  return ("CIFAR-10 (JPEG copy)" if config.dataset == "cifar10" else
          config.dataset)


def options(config, draws):
  """The `evaluation.Options` of the flags, with R = `draws`."""
  return evaluation.Options(
      draws=draws, seed=config.seed, unit_size=config.unit_size,
      randomized=config.randomized,
      bpda=(config.bpda_layers if config.bpda_layers else
            "auto" if config.bpda else "off"),
      sanity_images=config.sanity_images, convergence=config.convergence,
      eot_curve=tuple(int(k) for k in config.eot_curve),
      grid_images=config.grid_images, grid_samples=config.grid_samples,
      allow_large_epsilon=config.allow_large_epsilon,
      data_name=data_name(config),
      model_name=config.model_name or config.model).validate()


def with_surrogates(config, names, paths, model, checks):
  """The model with the surrogates and training images its attacks need.

  Surrogates a planned attack needs are given, reused from --report_dir or
  trained (for a model that is randomized, holds a transform or has
  BPDA-wrapped layers; a deterministic plain classifier is its own best
  source). Where each came from is put into `paths`.

  Returns:
    A `suite.Target` (`evaluation.prepare` adds what `checks` found).
  """
  defended = bool(adv_layer.find_transforms(model))
  trainable = config.train_surrogates and (
      defended or checks.randomized or checks.bpda_layers)
  train_data = None
  given = {"surrogate": config.surrogate,
           "adversarial_surrogate": config.adversarial_surrogate}
  needed = {field for field in
            {suite.REGISTRY[n].needs_surrogate for n in names} - {None}
            if given[field] is None and not os.path.exists(
                os.path.join(config.report_dir, f"{field}.keras"))}
  if trainable and needed:
    settings = surrogates.surrogate_settings(config.surrogate_preset)
    count = settings["train_examples"]
    train_data = data.load_arrays(
        config.dataset, f"train[:{count}]" if count else "train",
        data_dir=config.data_dir)
  models, found = surrogates.train_surrogates(
      model, names, config.report_dir, given, train_data,
      config.surrogate_preset, config.seed, drop=list(checks.bpda_layers))
  paths.update(found)
  train_images = None
  if "reparam" in names and defended:
    train_images = load_images(config, "train", config.reparam_images)[0]
  return suite.Target(
      model, surrogate=models["surrogate"], train_images=train_images,
      adversarial_surrogate=models["adversarial_surrogate"])


def dry_run(config, prepared, strategy):
  """Prints the estimated cost of the evaluation."""
  count = len(prepared.plan.attacks) + 1
  with tqdm.tqdm(total=count, desc="dry run probes") as bar:

    def probed(name):
      bar.set_postfix(probed=name, refresh=False)
      bar.update()

    shards = distributed.shard_of(strategy, config.num_shards,
                                  config.shard_index)[0]
    estimate = cost.estimate_cost(
        prepared.plan, prepared.target, prepared.x, prepared.y,
        probe_images=config.probe_images,
        shards=sorted({1, len(distributed.local_devices(strategy)) * shards}),
        progress=probed)
  print(estimate.table())
  print(f"(probes: {estimate.probe_images} images, "
        f"{estimate.probe_s:.1f} s)")


def user_import_path():
  """`sys.path` for `--import`: as `python -m` sets it, not as a script's.

  Run as `python examples/attack_eval.py`, Python puts `examples/` first on
  `sys.path`, where its programs (`defenses`, `benchmark`, ...) would shadow
  a user's modules of the same names. This drops that folder and puts the
  working directory first, as `python -m` does, so that `--import=defenses`
  imports the user's `defenses` (from the working directory, PYTHONPATH or
  an installed package); `examples.defenses` still names this repository's.
  This program imports nothing from its own folder by a bare name.
  """
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [os.getcwd()] + [
      p for p in sys.path
      if os.path.abspath(p or os.curdir) not in (here, os.getcwd())]


def evaluate(config):
  """The program: checks, units, report; returns the exit status."""
  start = time.perf_counter()
  if config.cpu_devices:
    split_cpu(config.cpu_devices)
  strategy = training.make_strategy(config.strategy)  # First: cluster setup.
  user_import_path()
  preflight.import_modules(getattr(config, "import"))
  budget, draws, num_examples = make_budget(
      config.budget, common.parse_epsilon(config.epsilon),
      {name: getattr(config, name) for name in OVERRIDES})
  # What needs no model or data is checked before loading them.
  preflight.check_epsilon(budget.epsilon, budget.value_range,
                          allow_large=config.allow_large_epsilon,
                          flag="--epsilon")
  preflight.check_report_dir(config.report_dir, flag="--report_dir")
  names = suite.resolve_attacks(config.attacks)
  opts = options(config, draws)
  model = load_model(config.model)
  x, y, num_classes = load_images(config, config.split, num_examples)
  paths = {}
  prepared = evaluation.prepare(
      model, x, y, names, budget, config.report_dir, opts,
      surrogates=functools.partial(with_surrogates, config, names, paths),
      start=start, num_classes=num_classes)
  if config.replay_attack:
    outcome = export.replay(prepared.target, os.path.join(
        config.report_dir, export.EXAMPLES_FILE), config.replay_example,
                            config.replay_attack, recraft=config.recraft)
    print(json.dumps(outcome, indent=1))
    return 0
  if config.dry_run:
    dry_run(config, prepared, strategy)
    return 0
  if not config.merge_only:
    summary = prepared.run(
        strategy=None if config.strategy == "default" else strategy,
        shard=plan_lib.Shard(config.num_shards, config.shard_index))
    failed = 1 if summary.failed and not config.keep_going else 0
    if config.strategy == "multi_worker" and not training.is_chief(strategy):
      print("Worker done (every worker is); the chief writes the report.")
      return failed
    if config.num_shards > 1:
      print(f"Shard {config.shard_index} of {config.num_shards} done; when "
            "every shard is, rerun with --merge_only for the report.")
      return failed
  result = prepared.report({
      "data": data_name(config), "dataset": config.dataset,
      "split": (f"{os.path.basename(config.data_npz)}[:{len(x)}]"
                if config.data_npz else f"{config.split}[:{num_examples}]"),
      "model": config.model,
      "surrogate": paths["surrogate"],
      "adversarial_surrogate": paths["adversarial_surrogate"],
      "surrogate_preset": config.surrogate_preset,
      "attacks_requested": config.attacks,
      "budget_preset": config.budget,
      "imports": getattr(config, "import"),
  })
  print(f"Report: {os.path.abspath(result.paths['md'])} "
        f"({time.perf_counter() - start:.1f} s)")
  print(result)  # First line the verdict, last line its state and figure.
  status = exit_status(result, config.keep_going)
  if status == 1:
    print(f"Verdict {suite.INCOMPLETE}: attacks raised "
          f"({', '.join(sorted(result.suite_result.failed))}); exit status 1 "
          "(--keep_going to exit 0).", file=sys.stderr)
  return status


def main(argv):
  del argv
  try:
    return evaluate(FLAGS)
  except (ValueError, TypeError, FileNotFoundError, ImportError) as error:
    if FLAGS.verbose_errors:
      traceback.print_exc()
    print(f"attack_eval.py: error: {error}", file=sys.stderr)
    traceback.clear_frames(error.__traceback__)
    return BAD_INPUT_STATUS


if __name__ == "__main__":
  define_flags()
  app.run(main)
