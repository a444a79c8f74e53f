"""The main job end to end on the real Fashion-MNIST files (smoke config)."""

import json
import os

import pytest

from dropjax import data as djdata
from experiments import compare
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
  rec = on_disk["records"][0]
  for field in (
    "regimen",
    "seed",
    "setting",
    "test_accuracy",
    "test_loss",
    "final_train_loss",
    "validation_curve",
  ):
    assert field in rec
  for r in on_disk["records"]:
    assert 0.0 <= r["test_accuracy"] <= 1.0
    assert r["test_loss"] > 0
    assert len(r["validation_curve"]) >= 1
  report = open(os.path.join(workdir, "report.md")).read()
  assert "explicit + implicit" in report and "DROPOUT_2" in report
  assert "Analytic replacement vs dropout" in report
  for png in ("learning_curves.png", "test_accuracy.png"):
    assert os.path.getsize(os.path.join(workdir, png)) > 1000


@needs_data
def test_rerun_skips_finished_runs(smoke_run, capsys):
  config, workdir, first = smoke_run
  again = compare.run(config, workdir)
  out = capsys.readouterr().out
  assert out.count("finished earlier, skipped") == (
    len(config.settings) * len(config.regimens)
  )
  assert [r["test_accuracy"] for r in again["records"]] == [
    r["test_accuracy"] for r in first["records"]
  ]


@needs_data
def test_nan_stops_the_run_and_keeps_the_others(tmp_path):
  config = compare_configs.get_config("smoke")
  config.regimens = ("none", "dropout")
  config.settings = ("small",)
  config.seeds = (0,)
  config.learning_rate = 1e30  # Adam's first step: |Δw| ~ 1e30
  config.model.layer_sizes = (784, 8, 10)
  results = compare.run(config, str(tmp_path))
  failed = {f["regimen"]: f["error"] for f in results["failures"]}
  assert set(failed) == {"none", "dropout"}
  assert "seed" in failed["none"] and "step" in failed["none"]
  assert os.path.exists(tmp_path / "results.json")


def test_bad_data_directory_names_the_fix(tmp_path):
  config = compare_configs.get_config("smoke")
  config.data.source = f"idx:{tmp_path / 'nowhere'}"
  with pytest.raises(djdata.DataError, match="dataset-fashion-mnist"):
    compare.run(config, str(tmp_path / "out"))


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
