"""The shared experiment harness: CLI, config guard, lock, statistics."""

import hashlib
import json
import math
import os
import subprocess
import sys

import pytest

from experiments import compare
from experiments import harness
from experiments import stats
from experiments.configs import compare as compare_configs
from experiments.configs import compressibility as cmp_configs
from experiments.configs import implicit_effect as ie_configs
from experiments.configs import language_model as lm_configs
from experiments.configs import schedules as sched_configs
from experiments.configs import tune as tune_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = (
  "compare",
  "compare_report",
  "compressibility",
  "compressibility_report",
  "implicit_effect",
  "language_model",
  "language_model_report",
  "tune",
  "tune_report",
)


def _cli(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize(
  "module,valid",
  [
    (compare_configs, "default, accel, smoke"),
    (tune_configs, "default, accel, smoke"),
    (cmp_configs, "default, smoke"),
    (lm_configs, "default, smoke, accel"),
    (ie_configs, "default, smoke"),
    (sched_configs, "default, smoke"),
  ],
)
def test_unknown_variant_names_the_valid_ones(module, valid):
  with pytest.raises(ValueError, match=f"valid: {valid}"):
    module.get_config("bogus")
  assert module.get_config().to_dict() == module.get_config("default").to_dict()


def test_comma_lists_become_typed_tuples():
  defaults = compare_configs.get_config("smoke")
  config = compare_configs.get_config("smoke")
  config.regimens = ("none,dropout",)  # how ml_collections reads it
  config.seeds = ("3, 4",)
  config.model.layer_sizes = (784, "16", 10)
  changed = harness.parse_tuple_overrides(config, defaults)
  assert config.regimens == ("none", "dropout")
  assert config.seeds == (3, 4) and all(type(s) is int for s in config.seeds)
  assert config.model.layer_sizes == (784, 16, 10)
  assert set(changed) == {"regimens", "seeds", "model.layer_sizes"}
  assert harness.parse_tuple_overrides(config, defaults) == []
  floats = cmp_configs.get_config("smoke")
  floats.curves.fractions = (0, 0.5)
  harness.parse_tuple_overrides(floats, cmp_configs.get_config("smoke"))
  assert [type(f) for f in floats.curves.fractions] == [float, float]


@pytest.mark.parametrize(
  "key,value",
  [("seeds", ("a,b",)), ("seeds", (0.5,)), ("regimens", ("none,,dropout",))],
)
def test_a_bad_list_shows_the_syntax(key, value):
  config = compare_configs.get_config("smoke")
  config[key] = value
  with pytest.raises(
    harness.TupleSyntaxError,
    match=rf"--config\.{key}: .*comma list, e\.g\. "
    rf"--config\.{key}=",
  ):
    harness.parse_tuple_overrides(config, compare_configs.get_config("smoke"))


def test_ml_collections_reads_string_lists_as_one_name():
  """What the harness repairs: the parse of ml_collections' tuple flags."""
  from ml_collections.config_flags import tuple_parser

  parse = tuple_parser.TupleParser().parse
  assert parse("none,dropout") == ("none,dropout",)
  assert parse("0,1") == (0, 1)
  with pytest.raises(ValueError):
    parse("0,,1")


# ------------------------------------------------------------ config guard


def test_check_config_names_every_differing_key(tmp_path):
  config = compare_configs.get_config("smoke")
  harness.check_config(str(tmp_path), config, compare.VOLATILE_KEYS)
  saved = json.load(open(tmp_path / harness.CONFIG_FILE))
  assert saved["learning_rate"] == config.learning_rate
  config.regimens = ("none",)  # volatile: allowed
  config.progress = True
  harness.check_config(str(tmp_path), config, compare.VOLATILE_KEYS)
  config.learning_rate = 0.5
  config.n5000.steps = 7
  with pytest.raises(harness.ConfigMismatchError) as e:
    harness.check_config(str(tmp_path), config, compare.VOLATILE_KEYS)
  msg = str(e.value)
  assert "learning_rate: 0.001 -> 0.5" in msg
  assert "n5000.steps: 40 -> 7" in msg
  assert "another --workdir" in msg and "regimens" not in msg
  assert isinstance(e.value, ValueError)


def test_check_config_reads_old_language_model_workdirs(tmp_path):
  config = lm_configs.get_config("smoke")
  d = harness.config_dict(config)
  with open(tmp_path / harness.CONFIG_FILE, "w") as f:
    json.dump({"fingerprint": "x", "config": d}, f)
  harness.check_config(str(tmp_path), config, ("regimens", "progress"))
  # The fingerprint keeps its old value, so finished regimens stay valid.
  old = dict(d)
  for k in ("regimens", "progress"):
    old.pop(k)
  want = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[
    :16
  ]
  assert harness.fingerprint(config, ("regimens", "progress")) == want


class _Stop(Exception):
  pass


def test_compare_refuses_a_changed_config_on_resume(tmp_path, monkeypatch):
  def stop(*a, **k):
    raise _Stop()

  # No data, no training: stop right after the config guard.
  monkeypatch.setattr(compare, "validate", lambda c: (None, {}))
  monkeypatch.setattr(compare, "_run_settings", stop)
  config = compare_configs.get_config("smoke")
  with pytest.raises(_Stop):
    compare.run(config, str(tmp_path))
  config.regimens = ("none", "dropout")  # volatile
  with pytest.raises(_Stop):
    compare.run(config, str(tmp_path))
  config.learning_rate = 0.01
  config.seeds = (0, 1, 2)
  with pytest.raises(
    harness.ConfigMismatchError,
    match=r"learning_rate: 0\.001 -> 0\.01.*seeds: "
    r"\[0, 1\] -> \[0, 1, 2\]",
  ):
    compare.run(config, str(tmp_path))


# -------------------------------------------------------------- workdirs


def test_lock_refuses_a_second_holder(tmp_path):
  with harness.workdir_lock(str(tmp_path)) as path:
    assert open(path).read().strip() == str(os.getpid())
    with pytest.raises(harness.WorkdirLockedError, match="another process"):
      with harness.workdir_lock(str(tmp_path)):
        pass
  with harness.workdir_lock(str(tmp_path)):  # released on exit
    pass


def test_lock_refuses_another_process(tmp_path):
  code = (
    "import sys; from experiments import harness\n"
    "try:\n"
    f"  with harness.workdir_lock({str(tmp_path)!r}): pass\n"
    "except harness.WorkdirLockedError as e:\n"
    "  print(e); sys.exit(3)\n"
  )
  with harness.workdir_lock(str(tmp_path)):
    r = subprocess.run(
      [sys.executable, "-c", code],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
    )
  assert r.returncode == 3 and "in use by another process" in r.stdout


def test_save_figure_atomic(tmp_path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots()
  ax.plot([0, 1])
  path = str(tmp_path / "a.png")
  harness.save_figure_atomic(fig, path, dpi=50)
  plt.close(fig)
  assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.listdir(tmp_path) == ["a.png"]


# ------------------------------------------------------------ statistics


def test_stats():
  s = stats.summarize([1.0, None, 3.0])
  assert s == (2.0, math.sqrt(2.0), 2)
  assert stats.summarize([5.0]).sd == 0.0
  assert math.isnan(stats.summarize([5.0], single_sd=math.nan).sd)
  assert stats.summarize([]).n == 0
  assert stats.se_of_difference(1.0, 4, 2.0, 4) == math.sqrt(0.25 + 1.0)
  assert math.isnan(stats.se_of_difference(1.0, 1, 2.0, 4, min_n=2))
  assert stats.is_clear(1.0, 0.4) and not stats.is_clear(1.0, 0.5)
  assert not stats.is_clear(1.0, 0.0)
  assert stats.is_clear(1.0, 0.0, zero_se_ok=True)
  assert not stats.is_clear(0.004, 0.0, zero_se_ok=True, min_effect=0.005)
  assert not stats.is_clear(1.0, math.nan)
  assert stats.is_clear(1.0, math.nan, unknown_se_ok=True, min_effect=0.5)
  p = stats.paired_difference([1.0, 2.0, 4.0], [0.0, 1.0, 2.0])
  assert p.n == 3 and p.mean == pytest.approx(4 / 3)
  assert p.sd == pytest.approx(stats.summarize([1, 1, 2]).sd / math.sqrt(3))


# ------------------------------------------------------------------- CLI


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_exits_0(module):
  r = _cli(f"experiments.{module}", "--help")
  assert r.returncode == 0, r.stderr
  assert "--workdir" in r.stdout


def test_cli_errors_are_one_line_and_leave_no_workdir(tmp_path):
  w = str(tmp_path / "w")
  cfg = "experiments/configs/compare.py"
  for args, want in (
    ((), "--workdir is required"),
    (
      ("--workdir", w, "--config", f"{cfg}:bogus"),
      "valid: default, accel, smoke",
    ),
    (("--workdir", w, "--config", "nowhere.py"), "no config file"),
    (("--workdir", w, "--config.seeds=a,b"), "comma list"),
    (("--workdir", w, "--config.nokey=1"), "unknown config key"),
    # Found by the job itself before training (harness.ConfigError):
    (
      ("--workdir", w, "--config.data.source=idx:/nonexistent"),
      "data directory not found",
    ),
    (
      ("--workdir", w, "--config.data.source=mnist2"),
      "--config.data.source",
    ),
    (("--workdir", w, "--config.settings=n9"), "no config block"),
  ):
    r = _cli("experiments.compare", *args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("compare: error: ") and want in r.stderr, (
      r.stderr
    )
    if "data directory" not in want:  # the IDX error adds its "To fix:" line
      assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.exists(w)
  r = _cli("experiments.tune", "--workdir", w, "--config.data.source=mnist2")
  assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
  assert r.stderr.startswith("tune: error: unknown data source 'mnist2'")
  assert not os.path.exists(w)
  r = _cli("experiments.compare_report", "--workdir", w)
  assert r.returncode != 0 and "results.json" in r.stderr


def test_other_experiments_check_their_data_before_writing(tmp_path):
  """The compressibility study and the language model load and check their
  data before anything is written, like the main job."""
  w = str(tmp_path / "w")
  for module, args, want in (
    (
      "compressibility",
      ("--config.data.source=idx:/nonexistent",),
      "data directory not found",
    ),
    (
      "compressibility",
      ("--config.model.layer_sizes=100,32,10",),
      "set the first entry of --config.model.layer_sizes",
    ),
    ("compressibility", ("--config.conditions=control,nope",), "'nope'"),
    ("language_model", ("--config.corpus=nope",), "unknown text source"),
    (
      "language_model",
      ("--config.corpus=words:/nonexistent",),
      "word corpus directory '/nonexistent' does not exist",
    ),
    ("language_model", ("--config.regimens=dropout_1,nope",), "nope"),
  ):
    r = _cli(f"experiments.{module}", "--workdir", w, *args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"{module}: error: ") and want in r.stderr, (
      r.stderr
    )
    assert not os.path.exists(w), (module, args)
