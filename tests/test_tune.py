"""The tuning entry point: grids, the choice, resumption, no test split."""

import json
import os

import pytest

from dropjax import data as djdata
from experiments import compare
from experiments import tune
from experiments import tune_report
from experiments.configs import tune as tune_configs

HAVE_FASHION = os.path.exists(
  os.path.join(djdata.DEFAULT_FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")
)
needs_data = pytest.mark.skipif(
  not HAVE_FASHION, reason="apt-get install dataset-fashion-mnist"
)


def test_every_tunable_regimen_gets_the_same_budget():
  c = tune_configs.get_config()
  sizes = {r: len(tune.grid_points(c, r)) for r in c.regimens if r != "none"}
  assert len(set(sizes.values())) == 1, sizes
  assert tune.grid_points(c, "none") == [{}]
  assert set(c.seeds).isdisjoint(
    compare.harness.load_config_file("experiments/configs/compare.py").seeds
  )


def test_grid_points_are_the_product_and_checked():
  c = tune_configs.get_config()
  pts = tune.grid_points(c, "explicit_implicit")
  assert len(pts) == 6 and pts[0] == {
    "explicit_scale": 0.5,
    "implicit_scale": 0.5,
  }
  c.grid.dropout = {"rate": (0.1,), "l2": (1.0,)}
  with pytest.raises(
    ValueError, match=r"grid of 'dropout' must have the axes \['rate'\]"
  ):
    tune.grid_points(c, "dropout")
  del c.grid["l2"]
  with pytest.raises(ValueError, match="--config.grid.l2"):
    tune.grid_points(c, "l2")


def _rec(setting, regimen, point, hp, acc, seed):
  return {
    "setting": setting,
    "regimen": regimen,
    "point": point,
    "hparams": hp,
    "seed": seed,
    "best": {"validation": {"accuracy": acc, "loss": 1 - acc}},
  }


def test_choose_maximises_the_mean_over_seeds_first_max_wins():
  recs = [
    _rec("s", "dropout", "rate=0.1", {"rate": 0.1}, 0.80, 0),
    _rec("s", "dropout", "rate=0.1", {"rate": 0.1}, 0.90, 1),  # mean 0.85
    _rec("s", "dropout", "rate=0.5", {"rate": 0.5}, 0.86, 0),
    _rec("s", "dropout", "rate=0.5", {"rate": 0.5}, 0.83, 1),  # mean 0.845
    _rec("s", "dropout", "rate=0.3", {"rate": 0.3}, 0.85, 0),
    _rec("s", "dropout", "rate=0.3", {"rate": 0.3}, 0.85, 1),  # tie: later
  ]
  c = tune.choose(recs)["s"]["dropout"]
  assert c["hparams"] == {"rate": 0.1}
  assert [p["point"] for p in c["points"]] == [
    "rate=0.1",
    "rate=0.5",
    "rate=0.3",
  ]
  by_loss = tune.choose(recs, "loss")["s"]["dropout"]
  assert by_loss["hparams"] == {"rate": 0.1}
  snippet = tune_report.tuned_snippet(tune.choose(recs))
  # As the config file holds it (double quotes, the formatter's style) ...
  assert '"dropout": {"rate": 0.1}' in snippet
  # ... and valid Python that evaluates to the chosen values.
  namespace: dict = {}
  exec(snippet, namespace)
  assert namespace["TUNED"] == {"s": {"dropout": {"rate": 0.1}}}


@needs_data
def test_smoke_tuning_never_touches_test_and_resumes(
  tmp_path, monkeypatch, capsys
):
  config = tune_configs.get_config("smoke")
  config.regimens = ("none", "dropout")
  config.settings = ("n1000",)
  seen = []
  real = compare.djmetrics.predictive_metrics

  def spy(apply, params, x, y, **kw):
    seen.append(len(x))
    return real(apply, params, x, y, **kw)

  monkeypatch.setattr(compare.djmetrics, "predictive_metrics", spy)
  results = tune.run(config, str(tmp_path))
  assert len(results["records"]) == 3  # none + 2 dropout points, 1 seed
  assert 10000 not in seen  # the test split has 10000 examples
  chosen = results["chosen"]["n1000"]
  assert set(chosen) == {"none", "dropout"}
  means = {p["point"]: p["mean"] for p in chosen["dropout"]["points"]}
  assert chosen["dropout"]["mean"] == max(means.values())
  report = open(tmp_path / "report.md").read()
  assert "**chosen**" in report and "TUNED = {" in report
  assert os.path.getsize(tmp_path / "validation_surface.png") > 1000
  on_disk = json.load(open(tmp_path / "results.json"))
  assert on_disk["chosen"] == results["chosen"]
  again = tune.run(config, str(tmp_path))
  assert [r["best"] for r in again["records"]] == [
    r["best"] for r in results["records"]
  ]


def test_edge_of_grid_is_flagged_only_on_axes_with_an_interior():
  config = {
    "grid": {
      "dropout": {"rate": (0.1, 0.2, 0.3)},
      "explicit_implicit": {
        "explicit_scale": (0.5, 1.0, 2.0),
        "implicit_scale": (0.5, 1.0),
      },
    }
  }
  assert tune_report.edge_axes(config, "dropout", {"rate": 0.3}) == ["rate=0.3"]
  assert tune_report.edge_axes(config, "dropout", {"rate": 0.2}) == []
  # A two-value axis has no interior: never flagged.
  hp = {"explicit_scale": 1.0, "implicit_scale": 1.0}
  assert tune_report.edge_axes(config, "explicit_implicit", hp) == []
  hp = {"explicit_scale": 0.5, "implicit_scale": 1.0}
  assert tune_report.edge_axes(config, "explicit_implicit", hp) == [
    "explicit_scale=0.5"
  ]
  assert tune_report.edge_axes(config, "none", {}) == []


def test_main_job_defaults_are_the_recorded_tuning_runs_choice():
  # docs/results/tune/results.json is the tuning run behind the defaults;
  # the config's TUNED block must be exactly its choice.
  from experiments.configs import compare as compare_config

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "docs/results/tune/results.json")) as f:
    recorded = json.load(f)
  assert compare_config.TUNED == {
    s: {r: c["hparams"] for r, c in regs.items()}
    for s, regs in recorded["chosen"].items()
  }
  # ... and choose() on its records still makes the same choice.
  again = tune.choose(recorded["records"])
  assert {
    s: {r: c["hparams"] for r, c in regs.items()} for s, regs in again.items()
  } == compare_config.TUNED
  with open(os.path.join(root, "experiments/configs/compare.py")) as f:
    assert tune_report.tuned_snippet(recorded["chosen"]) in f.read()
