r"""The documentation tried command by command, as a newcomer would.

Every shell command in a code block of README.md, examples/README.md and
docs/*.md (a line that starts with `python`, `python3`, `.venv/bin/python`
or `make`, after any `NAME=value` prefixes, backslash continuations joined,
split at `;`, `&&`, `||`, `|` and `&`; also the command of an `sbatch
--wrap=`) is checked:

- `python examples/NAME.py ...` and `python -m examples.NAME ...`: the
  program exists, loads in that form (a program that imports the
  `examples` package works only with `-m`), and defines every `--flag` the
  command passes (`--noflag` for a boolean `flag`). The programs are loaded
  once, in one subprocess, as `__main__` up to their `app.run`, with
  absl's help flags defined;
- `python -m tests.NAME`: the module exists;
- `make TARGET`: the Makefile has the target.

The README's first screen holds the two commands and the headline verdict
table with its plot; its "Layout" section names every module of
`adv_layer/`, `attacks/` and `examples/` (see `layout_modules`); the smoke
commands of examples/README are what `make demo` runs (`make -n`); the
counts of the `adaptive` preset and the zoo's names in the docs are the
code's; and a few commands run as written in their smallest form.
"""

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", os.path.join("examples", "README.md"))
# The docs moved out of the README, checked like it for counts.
MOVED_DOCS = tuple(os.path.join("docs", name) for name in (
    "NOTES.md", "EVALUATION.md", "PERFORMANCE.md"))
# Every doc whose commands and links are checked.
ALL_DOCS = DOCS + tuple(sorted(
    os.path.relpath(path, ROOT)
    for path in glob.glob(os.path.join(ROOT, "docs", "*.md"))))
PYTHONS = ("python", "python3", ".venv/bin/python")
# Words that may start a shell segment before the command itself.
SHELL_WORDS = ("do", "then", "else", "time")
# The README's two commands (tests and .ci/run depend on them).
TWO_COMMANDS = (
    "python3 -m venv .venv && .venv/bin/pip install -e '.[cpu]' && make demo",
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && make test",
)
FIRST_SCREEN_LINES = 70
# Flags every absl program takes that no FlagValues lists.
SPECIAL_FLAGS = frozenset({"flagfile", "undefok"})
SUBPROCESS_TIMEOUT_S = 600
LEADERBOARD = os.path.join(ROOT, "examples", "leaderboard.py")

# Runs each program's file once, as `python examples/NAME.py` (argv[1]) or
# `python -m examples.NAME` (argv[2]) would, up to its `app.run`, which is
# replaced so that main never runs; prints {"path:NAME" or "module:NAME":
# {"flags": {name: is_bool}} or {"error": "..."}} as JSON. The flags a
# program defined are deleted after they are read, so that the next program
# can define flags of the same names.
LOAD_PROGRAMS = r"""
import json
import os
import runpy
import sys

from absl import app
from absl import flags

root = os.getcwd()
path_names, module_names = json.loads(sys.argv[1]), json.loads(sys.argv[2])
app.define_help_flags()
FLAGS = flags.FLAGS
results = {}


class Stop(Exception):
  pass


def stop(*args, **kwargs):
  raise Stop()


app.run = stop


def read(key, run):
  before = set(FLAGS)
  try:
    run()
    raise RuntimeError("the program did not call app.run")
  except Stop:
    results[key] = {"flags": {name: bool(FLAGS[name].boolean)
                              for name in FLAGS}}
  except BaseException as e:  # pylint: disable=broad-except
    results[key] = {"error": f"{type(e).__name__}: {e}"}
  for name in set(FLAGS) - before:
    if name in FLAGS:
      delattr(FLAGS, name)


# As a script: sys.path[0] is examples/, the repository root is not on it.
saved = list(sys.path)
sys.path[:] = [os.path.join(root, "examples")] + [
    p for p in saved if os.path.abspath(p or os.curdir) != root]
for name in path_names:
  path = os.path.join(root, "examples", name + ".py")
  read("path:" + name, lambda: runpy.run_path(path, run_name="__main__"))
sys.path[:] = [root] + saved
for name in module_names:
  read("module:" + name, lambda: runpy.run_module(
      "examples." + name, run_name="__main__", alter_sys=True))
print("DOCS_PROGRAMS " + json.dumps(results, sort_keys=True))
"""


def read_text(relative_path):
  with open(os.path.join(ROOT, relative_path), encoding="utf-8") as f:
    return f.read()


def code_lines(text):
  """The lines of a Markdown text's shell code blocks, in order.

  Fenced blocks count unless their language is `python`; indented blocks
  (4 spaces, after a blank line) count too.

  Args:
    text: the Markdown text.

  Returns:
    A list of lines with their indentation removed; a block ends with "".
  """
  lines, fence, in_indented, previous_blank = [], None, False, True
  for line in text.splitlines():
    stripped = line.strip()
    if fence is not None:
      if stripped.startswith("```"):
        fence = None
        lines.append("")
      elif fence != "python":
        lines.append(stripped)
      continue
    if stripped.startswith("```"):
      fence = stripped[3:].strip().lower()
      continue
    indented = line.startswith("    ") and stripped
    if indented and (in_indented or previous_blank):
      in_indented = True
      lines.append(stripped)
    elif stripped:
      if in_indented:
        lines.append("")
      in_indented = False
    previous_blank = not stripped
  return lines


def logical_lines(lines):
  """Joins lines that end with a backslash to the next one."""
  joined, pending = [], ""
  for line in lines:
    if line.endswith("\\"):
      pending += line[:-1].rstrip() + " "
      continue
    joined.append(pending + line)
    pending = ""
  if pending:
    joined.append(pending)
  return [line.strip() for line in joined if line.strip()]


def segments(command):
  """The simple commands of a shell line, as argument lists.

  Splits at `;`, `&&`, `||`, `|` and `&`, drops leading `NAME=value`
  assignments and `do`/`then`/..., and adds the command of each
  `--wrap=...` argument (sbatch).

  Args:
    command: one logical shell line.

  Returns:
    A list of argument lists, none empty.
  """
  lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
  lexer.whitespace_split = True
  found, current = [], []
  for token in list(lexer) + [";"]:
    if token and set(token) <= set(";&|"):
      while current and (re.fullmatch(r"[A-Za-z_]\w*=.*", current[0]) or
                         current[0] in SHELL_WORDS):
        current.pop(0)
      if current:
        found.append(current)
        for argument in current:
          if argument.startswith("--wrap="):
            found.extend(segments(argument[len("--wrap="):]))
      current = []
    else:
      current.append(token)
  return found


def doc_commands(relative_path):
  """`(argv, line)` for each command of a doc's code blocks (module doc)."""
  commands = []
  for line in logical_lines(code_lines(read_text(relative_path))):
    for argv in segments(line):
      if argv[0] in PYTHONS or argv[0] == "make":
        commands.append((argv, line))
  return commands


def classify(argv):
  """What a command runs.

  Args:
    argv: a command's arguments, argv[0] a Python or `make`.

  Returns:
    ("program", name, form, arguments) with form "path" or "module" for an
    example program; ("module", name) for another `-m` module of this
    repository; ("make", targets); ("other",) for anything else.
  """
  if argv[0] == "make":
    return ("make", [a for a in argv[1:] if not a.startswith("-") and
                     "=" not in a])
  if len(argv) >= 3 and argv[1] == "-m":
    if argv[2].startswith("examples."):
      return ("program", argv[2][len("examples."):], "module", argv[3:])
    if argv[2].startswith("tests."):
      return ("module", argv[2])
    return ("other",)
  if len(argv) >= 2 and argv[1].startswith("examples/"):
    name = argv[1][len("examples/"):]
    return ("program", name[:-len(".py")] if name.endswith(".py") else name,
            "path", argv[2:])
  return ("other",)


def section(text, heading):
  """The text under a `## heading` up to the next `## ` heading."""
  match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text,
                    re.MULTILINE | re.DOTALL)
  return match.group(1) if match else ""


def layout_modules(readme):
  r"""The modules README.md's "## Layout" section names.

  A module is named by a bullet line that starts with its path from the
  repository root in backticks, then a colon and one line of text:
  "- `attacks/runner.py`: ...". Other lines of the section are free text.

  Args:
    readme: README.md's text.

  Returns:
    The set of named paths ("/" separators).
  """
  return set(re.findall(r"^- `([\w/]+\.py)`:", section(readme, "Layout"),
                        re.MULTILINE))


def tree_modules():
  """Every `*.py` under adv_layer/ and attacks/, and examples/ (any depth)."""
  found = set()
  for package in ("adv_layer", "attacks", "examples"):
    for path in glob.glob(os.path.join(ROOT, package, "**", "*.py"),
                          recursive=True):
      found.add(os.path.relpath(path, ROOT).replace(os.sep, "/"))
  return found


def make_targets(makefile):
  """The targets the Makefile defines (rules and .PHONY)."""
  targets = set()
  for line in makefile.splitlines():
    match = re.match(r"^([A-Za-z0-9_.-][A-Za-z0-9_. -]*):(?!=)", line)
    if match:
      targets.update(match.group(1).split())
  return targets - {".PHONY"}


def zoo_names():
  """The published models' names, from the zoo folder's cards."""
  root = os.path.join(ROOT, "adv_layer", "zoo_models")
  return {os.path.relpath(path, root)[:-len(".json")].replace(os.sep, "/")
          for path in glob.glob(os.path.join(root, "**", "*.json"),
                                recursive=True)}


def adaptive_size():
  """How many attacks the `adaptive` preset names."""
  from attacks import registry  # pylint: disable=g-import-not-at-top
  return len(registry.PRESETS["adaptive"])


def start(argv):
  """Starts a subprocess in the repository root, its output captured.

  The environment of an enclosing `make` (as under `make test`) is left
  out, so that a `make` started here prints only its own commands.
  """
  env = {key: value for key, value in os.environ.items()
         if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
  env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def finish(process):
  """`(exit status, output)` of a started subprocess."""
  output, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
  return process.returncode, output


class DocsTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    """Collects the commands and starts every subprocess at once."""
    super().setUpClass()
    cls.readme = read_text("README.md")
    cls.commands = [(path, argv, line) for path in ALL_DOCS
                    for argv, line in doc_commands(path)]
    programs = [classify(argv) for _, argv, _ in cls.commands]
    by_form = {form: {p[1] for p in programs
                      if p[0] == "program" and p[2] == form and
                      os.path.exists(os.path.join(
                          ROOT, "examples", p[1] + ".py"))}
               for form in ("path", "module")}
    # The check's own check: this program imports the `examples` package.
    by_form["path"].add("verdict_table")
    cls.tmp = tempfile.mkdtemp()
    cls.table_path = os.path.join(cls.tmp, "table3.md")
    cls.table_command = cls.verdict_table_command(cls.table_path)
    cls.processes = {
        "programs": start([sys.executable, "-c", LOAD_PROGRAMS,
                           json.dumps(sorted(by_form["path"])),
                           json.dumps(sorted(by_form["module"]))]),
        "verdict_table": start([sys.executable] + cls.table_command[1:]),
        "attack_eval_help": start([sys.executable, "examples/attack_eval.py",
                                   "--helpshort"]),
        "make_demo": start(["make", "-s", "-n", "--no-print-directory",
                            "demo", "PYTHON=python"]),
    }
    cls.results = {}

  @classmethod
  def verdict_table_command(cls, output):
    """examples/README's verdict_table command on the golden reports.

    Each `--report=NAME=FOLDER` keeps its name and reads one of the golden
    evaluations' folders instead (tests/golden/plain, tests/golden/defended
    in turn); `--output` writes to `output`.
    """
    for _, argv, _ in cls.commands:
      kind = classify(argv)
      if kind[0] == "program" and kind[1] == "verdict_table":
        golden = ("tests/golden/plain", "tests/golden/defended")
        arguments, count = [], 0
        for argument in kind[3]:
          if argument.startswith("--report="):
            name = argument[len("--report="):].partition("=")[0]
            argument = f"--report={name}={golden[count % 2]}"
            count += 1
          elif argument.startswith("--output="):
            argument = f"--output={output}"
          arguments.append(argument)
        return argv[:len(argv) - len(kind[3])] + arguments
    raise AssertionError("no verdict_table command in the docs")

  @classmethod
  def tearDownClass(cls):
    for process in cls.processes.values():
      if process.poll() is None:
        process.kill()
        process.communicate()
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def result(self, key):
    if key not in self.results:
      self.results[key] = finish(self.processes[key])
    return self.results[key]

  def program_flags(self):
    status, output = self.result("programs")
    lines = [l for l in output.splitlines() if l.startswith("DOCS_PROGRAMS ")]
    self.assertLen(lines, 1, f"exit {status}:\n{output[-3000:]}")
    return json.loads(lines[0][len("DOCS_PROGRAMS "):])

  def test_the_docs_have_commands(self):
    for path in DOCS:
      self.assertGreaterEqual(
          sum(1 for p, _, _ in self.commands if p == path), 5, path)

  def test_programs_forms_and_flags(self):
    loaded = self.program_flags()
    problems, checked = [], 0
    for path, argv, line in self.commands:
      kind = classify(argv)
      if kind[0] != "program":
        continue
      _, name, form, arguments = kind
      if not os.path.exists(os.path.join(ROOT, "examples", name + ".py")):
        problems.append(f"{path}: no program examples/{name}.py: {line}")
        continue
      program = loaded[f"{form}:{name}"]
      if "error" in program:
        problems.append(f"{path}: {name} does not load as "
                        f"{' '.join(argv[:2 if form == 'path' else 3])} "
                        f"({program['error']}): {line}")
        continue
      defined = program["flags"]
      for argument in arguments:
        if not argument.startswith("--"):
          continue
        flag = argument[2:].partition("=")[0]
        known = (flag in defined or flag in SPECIAL_FLAGS or
                 (flag.startswith("no") and defined.get(flag[2:]) is True))
        if not known:
          problems.append(f"{path}: {name} defines no --{flag}: {line}")
      checked += 1
    self.assertEqual(problems, [])
    self.assertGreaterEqual(checked, 20)

  def test_path_form_fails_for_a_program_that_imports_examples(self):
    # `python examples/verdict_table.py` stops with one line naming the
    # module form (SystemExit), caught here as a form that does not load.
    loaded = self.program_flags()
    error = loaded["path:verdict_table"]["error"]
    self.assertIn("No module named 'examples'", error)
    self.assertIn("python -m examples.verdict_table", error)
    self.assertIn("report", loaded["module:verdict_table"]["flags"])
    attack_eval = loaded["path:attack_eval"]["flags"]
    self.assertIs(attack_eval["train_surrogates"], True)
    self.assertIs(attack_eval["model"], False)
    self.assertNotIn("no_such_flag", attack_eval)

  def test_other_modules_and_make_targets_exist(self):
    targets = make_targets(read_text("Makefile"))
    self.assertContainsSubset({"demo", "test"}, targets)
    problems = []
    for path, argv, line in self.commands:
      kind = classify(argv)
      if kind[0] == "make":
        problems += [f"{path}: no make target {t!r}: {line}"
                     for t in kind[1] if t not in targets]
      elif kind[0] == "module":
        module = os.path.join(ROOT, *kind[1].split(".")) + ".py"
        if not os.path.exists(module):
          problems.append(f"{path}: no module {kind[1]}: {line}")
    self.assertEqual(problems, [])

  def test_first_screen(self):
    first_screen = "\n".join(self.readme.splitlines()[:FIRST_SCREEN_LINES])
    for command in TWO_COMMANDS:
      self.assertIn("    " + command + "\n", first_screen)
    # The headline verdict: each row's worst case, interval and verdict are
    # those of its finished report, beside the paper's figure.
    rows = [l.replace("**", "") for l in first_screen.splitlines()
            if l.startswith("|")]
    for entry, paper in (("undefended", "0.0% (PGD)"), ("madry", "42.7%"),
                         ("defended", "80.2%")):
      with open(os.path.join(ROOT, "docs", "results", "leaderboard", entry,
                             "report.json"), encoding="utf-8") as f:
        report = json.load(f)
      worst = report["worst_case"]
      low, high = worst["strict_accuracy_ci95"]
      figure = (f"{100 * worst['strict_accuracy']:.1f}% "
                f"[{100 * low:.1f}, {100 * high:.1f}]")
      self.assertTrue(any(figure in r and paper in r and
                          f"| {report['verdict']} |" in r for r in rows),
                      (entry, figure, report["verdict"], rows))
    self.assertIn("(docs/LEADERBOARD.md)", first_screen)
    plots = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", first_screen)
    self.assertLen(plots, 1)
    self.assertTrue(os.path.exists(os.path.join(ROOT, plots[0])), plots[0])

  def test_layout_lists_every_module(self):
    listed, tree = layout_modules(self.readme), tree_modules()
    self.assertEqual(sorted(tree - listed), [], "not in README's Layout")
    self.assertEqual(sorted(listed - tree), [], "in README's Layout, no file")
    self.assertIn("attacks/suite.py", listed)

  def test_layout_parser(self):
    readme = ("## Layout\n\n- `attacks/a.py`: one.\n- `b.py` two\n"
              "text `attacks/c.py`: no\n- `examples/d/e.py`: two.\n"
              "## Next\n- `attacks/f.py`: after.\n")
    self.assertEqual(layout_modules(readme),
                     {"attacks/a.py", "examples/d/e.py"})

  def test_command_parser(self):
    self.assertEqual(
        segments("A=1 python examples/x.py --a='b c' && make demo; "
                 "for i in 1; do B=$i python -m examples.y --nob & done"),
        [["python", "examples/x.py", "--a=b c"], ["make", "demo"],
         ["for", "i", "in", "1"], ["python", "-m", "examples.y", "--nob"],
         ["done"]])
    self.assertEqual(segments("sbatch --wrap='python examples/x.py --c'"),
                     [["sbatch", "--wrap=python examples/x.py --c"],
                      ["python", "examples/x.py", "--c"]])
    self.assertEqual(
        logical_lines(code_lines(
            "text\n\n    python a.py \\\n        --b\n\n```python\n"
            "python c\n```\n```\nmake d\n```\n")),
        ["python a.py --b", "make d"])
    self.assertEqual(classify(["python3", "-m", "venv", ".venv"]), ("other",))
    self.assertEqual(classify([".venv/bin/python", "examples/z.py", "--q"]),
                     ("program", "z", "path", ["--q"]))

  def test_smoke_commands_are_make_demo(self):
    status, output = self.result("make_demo")
    self.assertEqual(status, 0, output)
    # The Makefile lets attack_eval.py's SUSPECT exit (2) pass: `|| [ ... ]`.
    made = [shlex.split(line.split(" || ")[0])
            for line in logical_lines(output.splitlines())]
    text = read_text(DOCS[1])
    start_at = text.index("Smoke scale (what `make demo` runs")
    block = text[start_at:].split("\n\n", 2)[1]
    documented = [shlex.split(line)
                  for line in logical_lines(code_lines("\n" + block + "\n"))]
    self.assertLen(made, 4)
    self.assertEqual(documented, made)

  def test_adaptive_counts(self):
    size = adaptive_size()
    counts = []
    for path in DOCS + MOVED_DOCS:
      text = " ".join(read_text(path).split())
      counts += [(path, int(n)) for n in re.findall(
          r"adaptive`[^.\d`]{0,40}?\b(\d+) attacks\b", text)]
    self.assertNotEmpty(counts)
    self.assertEqual([c for c in counts if c[1] != size], [])
    results = " ".join(read_text(os.path.join("docs", "RESULTS.md")).split())
    self.assertNotRegex(results, r"\b22[ -]attack")

  def test_zoo_names_in_docs_exist(self):
    names = zoo_names()
    self.assertIn("cifar10/defended_resnet18", names)
    texts = {path: read_text(path) for path in DOCS + MOVED_DOCS}
    texts["adv_layer/zoo_models/README.md"] = read_text(
        os.path.join("adv_layer", "zoo_models", "README.md"))
    texts["adv_layer/zoo.py"] = read_text(os.path.join("adv_layer", "zoo.py"))
    unknown = [(path, name) for path, text in texts.items()
               for name in re.findall(r"\bcifar10/\w+", text)
               if name not in names]
    self.assertEqual(unknown, [])

  def test_relative_links_resolve(self):
    broken = []
    for path in ALL_DOCS + (os.path.join("adv_layer", "zoo_models",
                                         "README.md"),):
      folder = os.path.dirname(os.path.join(ROOT, path))
      for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)",
                               read_text(path)):
        if "://" not in target and not os.path.exists(
            os.path.join(folder, target)):
          broken.append((path, target))
    self.assertEqual(broken, [])

  def test_verdict_table_runs_as_written(self):
    status, output = self.result("verdict_table")
    self.assertEqual(status, 0, f"{self.table_command}\n{output}")
    with open(self.table_path, encoding="utf-8") as f:
      table = f.read()
    names = [a[len("--report="):].partition("=")[0]
             for a in self.table_command if a.startswith("--report=")]
    self.assertLen(names, 3)
    for name in names:
      self.assertIn(f"| {name} |", table)

  def test_attack_eval_help_runs_as_written(self):
    status, output = self.result("attack_eval_help")
    # absl's --helpshort prints the program's flags and exits with 1.
    self.assertEqual(status, 1, output)
    self.assertIn("--model:", output)
    self.assertNotIn("Traceback", output)


class LeaderboardDocsTest(tf.test.TestCase):
  """The published leaderboard against the finished reports kept with it."""

  def test_published_table_is_what_the_kept_reports_regenerate(self):
    # docs/LEADERBOARD.md names the command that made it; run that command on
    # a copy of the kept reports and compare every byte of the JSON and the
    # Markdown (both are made from JSON figures: nothing machine-dependent).
    docs = os.path.join(ROOT, "docs")
    with open(os.path.join(docs, "LEADERBOARD.md"), encoding="utf-8") as f:
      published_md = f.read()
    (command,) = [line.strip() for line in published_md.splitlines()
                  if line.strip().startswith(
                      "python examples/leaderboard.py --regenerate")]
    argv = command.split()
    self.assertEqual(argv[:2], ["python", "examples/leaderboard.py"])
    work = tempfile.mkdtemp()
    kept = os.path.join("docs", "results", "leaderboard")
    shutil.copytree(os.path.join(ROOT, kept), os.path.join(work, kept))
    shutil.copy(os.path.join(docs, "EVALUATION.md"),
                os.path.join(work, "docs"))
    run = subprocess.run([sys.executable, LEADERBOARD, *argv[2:]], cwd=work,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True,
                         check=False)
    self.assertEqual(run.returncode, 0, msg=run.stderr[-3000:])
    for name in ("leaderboard.json", "LEADERBOARD.md"):
      with open(os.path.join(docs, name), encoding="utf-8") as f:
        published = f.read()
      with open(os.path.join(work, "docs", name), encoding="utf-8") as f:
        self.assertEqual(f.read(), published, msg=name)
    with open(os.path.join(docs, "leaderboard.json"), encoding="utf-8") as f:
      rows = json.load(f)
    for r in rows:  # Each row's report is kept where the row says.
      self.assertTrue(r["report_dir"].startswith(kept), msg=r["report_dir"])
      for name in ("report.json", "report.md", "robustbench.json"):
        self.assertTrue(os.path.exists(
            os.path.join(ROOT, r["report_dir"], name)), msg=(r["name"], name))


if __name__ == "__main__":
  tf.test.main()
