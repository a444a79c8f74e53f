"""The main job end to end on the real Fashion-MNIST files (smoke config)."""

import json
import os

import pytest

from dropjax import data as djdata
from experiments import compare
from experiments import harness
from experiments.configs import compare as compare_configs

pytestmark = pytest.mark.slow

HAVE_FASHION = os.path.exists(
  os.path.join(djdata.DEFAULT_FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")
)
needs_data = pytest.mark.skipif(
  not HAVE_FASHION, reason="apt-get install dataset-fashion-mnist"
)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("compare"))
  config = compare_configs.get_config("smoke")
  results = compare.run(config, workdir)
  return config, workdir, results


@needs_data
def test_smoke_writes_results_report_and_plots(smoke_run):
  config, workdir, results = smoke_run
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  n_expected = len(config.settings) * len(config.regimens) * len(config.seeds)
  assert len(on_disk["records"]) == n_expected
  assert not on_disk["failures"]
  for r in on_disk["records"]:
    for which in ("best", "final"):
      for split in ("test", "train", "validation"):
        m = r[which][split]
        assert 0.0 <= m["accuracy"] <= 1.0 and m["loss"] > 0
        assert 0.0 <= m["ece"] <= 1.0 and m["entropy"] >= 0
      assert sum(r[which]["test_bins"]["count"]) == 10000
    # The best-validation parameters are at least as good on validation as
    # the final ones (the final step is one of the evaluations).
    assert (
      r["best"]["validation"]["accuracy"]
      >= r["final"]["validation"]["accuracy"] - 1e-6
    )
    assert r["best_step"] in [c["step"] for c in r["validation_curve"]]
    assert r["hparams"] == config[r["setting"]].hparams[r["regimen"]].to_dict()
  diag = {(d["setting"], d["regimen"]) for d in on_disk["diagnostics"]}
  assert diag == {
    (s, r) for s in config.settings for r in config.diagnostics.regimens
  }
  for d in on_disk["diagnostics"]:
    for seed in d["seeds"]:
      # every site alone, then every site at once
      assert list(seed["taylor_train"]) == ["hidden_0", "hidden_1", "all"]
      assert list(seed["noise_train"]) == ["hidden_0", "hidden_1", "all"]
      for v in seed["taylor_test"].values():
        assert v["mc_se"] > 0 and v["r_exp_gauss_newton"] > 0
  report = open(os.path.join(workdir, "report.md")).read()
  for want in (
    "## Verdict",
    "explicit + implicit",
    "Gaussian dropout",
    "Paired differences against dropout",
    "Gauss–Newton / MC",
    "Final parameters",
  ):
    assert want in report, want
  for png in (
    "learning_curves.png",
    "paired_differences.png",
    "reliability.png",
  ):
    assert os.path.getsize(os.path.join(workdir, png)) > 1000


@needs_data
def test_rerun_skips_finished_runs(smoke_run, capsys):
  config, workdir, first = smoke_run
  again = compare.run(config, workdir)
  out = capsys.readouterr().out
  assert out.count("finished earlier, skipped") == (
    len(config.settings) * len(config.regimens)
  )
  assert [r["best"]["test"]["accuracy"] for r in again["records"]] == [
    r["best"]["test"]["accuracy"] for r in first["records"]
  ]


@needs_data
def test_nan_stops_the_run_and_keeps_the_others(tmp_path):
  config = compare_configs.get_config("smoke")
  config.regimens = ("none", "dropout")
  config.settings = ("n1000",)
  config.seeds = (0,)
  config.learning_rate = 1e30  # Adam's first step: |Δw| ~ 1e30
  config.model.layer_sizes = (784, 8, 10)
  results = compare.run(config, str(tmp_path))
  failed = {f["regimen"]: f["error"] for f in results["failures"]}
  assert set(failed) == {"none", "dropout"}
  assert "seed" in failed["none"] and "step" in failed["none"]
  assert os.path.exists(tmp_path / "results.json")


def test_bad_data_directory_names_the_fix(tmp_path):
  """Missing data stops the job before anything is written; the message is
  the data loader's, with its fix."""
  config = compare_configs.get_config("smoke")
  config.data.source = f"idx:{tmp_path / 'nowhere'}"
  with pytest.raises(harness.ConfigError, match=r"idx:/path/to/dir") as e:
    compare.run(config, str(tmp_path / "out"))
  assert isinstance(e.value.__cause__, djdata.DataError)
  assert not os.path.exists(tmp_path / "out")
  config.data.source = "fashion_mnist"
  config.data.data_dir = str(tmp_path / "nowhere")
  with pytest.raises(harness.ConfigError, match="dataset-fashion-mnist"):
    compare.run(config, str(tmp_path / "out2"))
  assert not os.path.exists(tmp_path / "out2")


@needs_data
def test_labels_outside_the_model_outputs_stop_before_training(
  tmp_path, monkeypatch
):
  config = compare_configs.get_config("smoke")
  config.model.layer_sizes = (784, 32, 32, 5)  # Fashion-MNIST has 10 classes

  def no_training(*a, **k):
    raise AssertionError("training started")

  monkeypatch.setattr(compare.djtrain, "train", no_training)
  with pytest.raises(
    ValueError,
    match=r"training labels .* lie in \[0, 9\] but the model has "
    r"5 outputs.*--config.model.layer_sizes",
  ):
    compare.run(config, str(tmp_path))


def _record(regimen, seed, acc, loss=0.5, ece=0.05, setting="s"):
  m = {"accuracy": acc, "loss": loss, "ece": ece, "entropy": 0.3}
  return {
    "setting": setting,
    "regimen": regimen,
    "seed": seed,
    "hparams": {},
    "train_size": 100,
    "steps": 10,
    "epochs": 1.0,
    "best_step": 10,
    "train_seconds": 1.0,
    "validation_curve": [
      {
        "step": 10,
        "epoch": 1,
        "validation_accuracy": acc,
        "validation_loss": loss,
        "train_loss": loss,
      }
    ],
    "best": {"test": m, "train": m, "validation": m},
    "final": {"test": m, "train": m, "validation": m},
  }


def test_paired_differences_and_verdicts_skip_runs_that_did_not_train():
  from experiments import compare_report as cr

  accs_none = [0.80, 0.81, 0.79, 0.82, 0.80]
  accs_drop = [
    0.82,
    0.83,
    0.80,
    0.85,
    0.81,
  ]  # +0.02, +0.02, +0.01, +0.03, +0.01
  records = [_record("none", s, a) for s, a in enumerate(accs_none)]
  records += [_record("dropout", s, a) for s, a in enumerate(accs_drop)]
  d = cr.paired(records, "s", "dropout", "none", "accuracy")
  diffs = [b - a for a, b in zip(accs_none, accs_drop)]
  import numpy as np

  assert d.n == 5
  assert abs(d.mean - np.mean(diffs)) < 1e-12
  assert abs(d.sd - np.std(diffs, ddof=1) / np.sqrt(5)) < 1e-12
  # a diverged regimen: chance accuracy, huge loss
  records += [_record("l2", s, 0.1, loss=1e18) for s in range(5)]
  config = {
    "model": {"layer_sizes": (784, 10)},
    "regimens": ("none", "dropout", "l2"),
    "settings": ("s",),
  }
  text = " ".join(cr.findings({"records": records}, config))
  assert "did not train" in text and "L2 seed 0" in text
  assert "dropout − none: test accuracy +1.80 pp (± 0.37, better)" in text
  assert "L2 − none" not in text  # no verdict over diverged runs


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("model.name", "cnn", r"--config.model.name='cnn' is not supported"),
    (
      "model.layer_sizes",
      (100, 32, 10),
      r"\(28, 28, 1\) \(784 inputs\).*--config.model.layer_sizes",
    ),
    ("data.validation_size", 60000, r"--config.data.validation_size"),
  ],
)
@needs_data
def test_bad_configs_are_refused_before_training(
  tmp_path, monkeypatch, key, value, message
):
  config = compare_configs.get_config("smoke")
  section, _, name = key.partition(".")
  config[section][name] = value

  def no_training(*a, **k):
    raise AssertionError("training started")

  monkeypatch.setattr(compare.djtrain, "train", no_training)
  with pytest.raises(ValueError, match=message):
    compare.run(config, str(tmp_path))


def test_unknown_regimen_in_a_comma_list_is_refused_before_anything(tmp_path):
  config = compare_configs.get_config("smoke")
  config.regimens = ("dropout", "nope")
  with pytest.raises(harness.ConfigError, match="unknown regimen 'nope'"):
    compare.run(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def test_compounding_and_the_diagnostics_sentence_follow_the_numbers():
  from experiments import compare_report as cr

  def site(gap, td, ti):
    return (
      {
        "mc_gap": gap,
        "mc_se": 0.01,
        "r_exp_gauss_newton": gap / 2,
        "r_exp_sampled_label": gap / 2,
      },
      {
        "trace_dropout": td,
        "trace_implicit": ti,
        "trace_ratio": ti / td,
        "relative_distance": 0.5,
        "noise_floor": 0.2,
      },
    )

  def entry(seed, scale):
    a, b, joint = (
      site(1.0, 2.0, 1.0),
      site(3.0, 2.0, 1.0),
      site(8.0 * scale, 12.0, 2.0),
    )
    return {
      "seed": seed,
      "rate": 0.5,
      "taylor_train": {"h1": a[0], "h2": b[0], "all": joint[0]},
      "taylor_test": {"h1": a[0], "h2": b[0], "all": joint[0]},
      "noise_train": {"h1": a[1], "h2": b[1], "all": joint[1]},
    }

  results = {
    "records": [],
    "diagnostics": [
      {
        "setting": "s",
        "regimen": "dropout",
        "seeds": [entry(0, 1.0), entry(1, 1.5)],
      }
    ],
  }
  c = cr.compounding(results, "s", "dropout")
  # all / (sum of sites): gaps (8, 12) / 4, traces 12 / 4, implicit 2 / 2
  assert c == {"gap": 2.5, "noise_dropout": 3.0, "noise_implicit": 1.0}
  text = cr.diagnostics_sentence(results, "s", "dropout")
  assert "with every site dropped at once it is 0.50x" in text
  assert "understates the expected loss increase" in text
  assert "2.50x the sum of the single-site loss increases" in text
  assert "noises compound" in text
  assert cr.compounding({"diagnostics": []}, "s", "dropout") is None


@needs_data
def test_schedule_experiment_smoke(tmp_path):
  """The dropout-schedule config (experiments/configs/schedules.py:smoke)
  runs through the main job: early regimens train with the rate switched off
  after `until`, and the report has their rows and verdict sentences."""
  from experiments.configs import schedules as schedule_configs

  config = schedule_configs.get_config("smoke")
  results = compare.run(config, str(tmp_path))
  regimens = {r["regimen"] for r in results["records"]}
  assert regimens == set(schedule_configs.HPARAMS)
  report = (tmp_path / "report.md").read_text()
  assert report.startswith("# Early dropout and its analytic replacement")
  assert "early dropout − dropout:" in report
  assert "early explicit + implicit − early dropout:" in report

  # The early runs' training loss after the cut-off (no dropout, step 8 of
  # 40 on) is that of a plain network: below standard dropout's.
  def last_train_loss(regimen):
    rs = [r for r in results["records"] if r["regimen"] == regimen]
    return sum(r["validation_curve"][-1]["train_loss"] for r in rs) / len(rs)

  assert last_train_loss("early_dropout") < last_train_loss("dropout")


def test_early_regimens_check_their_cut_off():
  with pytest.raises(ValueError, match="until is the fraction"):
    compare.check_hparams("early_dropout", {"rate": 0.5, "until": 1.5})
  with pytest.raises(ValueError, match=r"\['rate', 'until'\]"):
    compare.check_hparams("early_dropout", {"rate": 0.5})
