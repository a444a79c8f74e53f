"""The implicit-effect experiment: smoke run and the verdict arithmetic."""

import json
import os

import pytest

from experiments import harness
from experiments import implicit_effect as ie
from experiments.configs import implicit_effect as ie_configs

from test_compare import needs_data


def _records(values: dict[str, list[float]]) -> list[dict]:
  return [
    {"regimen": reg, "seed": s, "metric": v, "curve": [(0, v)]}
    for reg, vs in values.items()
    for s, v in enumerate(vs)
  ]


def test_contrasts_are_paired_over_seeds_and_verdicts_follow_them():
  cell = {
    "model": "mlp",
    "optimizer": "sgd",
    "train_size": 1000,
    "steps": 10,
    "records": _records(
      {
        "dropout_1": [10.0, 11.0, 12.0],
        "dropout_8": [11.0, 12.1, 12.9],  # worse by ~1 pp, seed by seed
        "dropout_8_fix_noise": [10.1, 11.0, 12.1],  # repairs it
        "dropout_8_implicit": [11.0, 12.1, 12.9],  # changes nothing
        "none": [12.0, 13.2, 13.9],  # dropout helps: a regime for the claim
      }
    ),
  }
  d = ie.contrast(cell["records"], "dropout_8", "dropout_1")
  assert d.n == 3 and abs(d.mean - (1.0 + 1.1 + 0.9) / 3) < 1e-12
  text = ie.verdict(cell)
  assert text.startswith("Dropout regularizes here")
  assert "**DROPOUT_8 is worse than DROPOUT_1**" in text
  assert "Adding fix-noise to DROPOUT_8 makes it better" in text
  assert "Adding the implicit term changes nothing resolved" in text
  worse = dict(
    cell,
    records=[
      dict(r, metric=r["metric"] - 5.0) if r["regimen"] == "none" else r
      for r in cell["records"]
    ],
  )
  assert ie.verdict(worse).startswith("Dropout hurts here")
  # An unpaired seed is left out of the contrast.
  recs = cell["records"] + [{"regimen": "dropout_1", "seed": 7, "metric": 0.0}]
  assert ie.contrast(recs, "dropout_8", "dropout_1").n == 3


def test_bad_cells_are_refused_before_anything_is_written(tmp_path):
  config = ie_configs.get_config("smoke")
  config.cells_to_run = ("nope",)
  with pytest.raises(harness.ConfigError, match="cell 'nope' has no entry"):
    ie.run(config, str(tmp_path / "w"))
  config = ie_configs.get_config("smoke")
  config.cells.mlp_sgd.optimizer = "rmsprop"
  with pytest.raises(harness.ConfigError, match="cells.mlp_sgd.optimizer"):
    ie.run(config, str(tmp_path / "w"))
  config = ie_configs.get_config("smoke")
  config.mlp.batch_size = 64  # x8 = 512 > 200 examples
  with pytest.raises(harness.ConfigError, match="larger-batch control"):
    ie.run(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow
@needs_data
def test_smoke_runs_both_models_and_writes_the_report(tmp_path):
  config = ie_configs.get_config("smoke")
  results = ie.run(config, str(tmp_path))
  assert set(results["cells"]) == {"mlp_sgd", "lstm_sgd"}
  regimens = set(ie_configs.REGIMENS)
  for cell in results["cells"].values():
    got = {r["regimen"] for r in cell["records"]}
    assert got == regimens
    assert all(r["metric"] is not None for r in cell["records"])
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["cells"].keys() == results["cells"].keys()
  report = (tmp_path / "report.md").read_text()
  assert "## Verdicts" in report and "**mlp_sgd (MLP, sgd" in report
  assert (tmp_path / "curves.png").stat().st_size > 1000
  # The cells are the sub-experiments' own work directories.
  assert (tmp_path / "cells" / "mlp_sgd" / "report.md").exists()
  assert (tmp_path / "cells" / "lstm_sgd" / "report.md").exists()
