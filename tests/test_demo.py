import json

import pytest

from dimalign.cli import main
from dimalign.demo import DemoSettings, fit_seeds, format_summary, run_demo


@pytest.mark.slow
def test_demo_on_real_things_data(things_dir, tmp_path):
    settings = DemoSettings(max_epochs=3, n_dims=20, n_dnn_triplets=20_000)
    summary = run_demo(tmp_path, data_dir=things_dir, settings=settings)

    for side in ("human", "dnn"):
        assert (tmp_path / side / "embedding.npz").is_file()
        assert (tmp_path / side / "manifest.json").is_file()
        assert summary[side]["n_epochs"] == 3
        assert 0.33 < summary[side]["val_accuracy"] <= 1.0
        assert -1.0 <= summary[side]["things48_r"] <= 1.0
    assert summary["human"]["n_train"] + summary["human"]["n_val"] == 131_552
    assert summary["dnn"]["n_train"] + summary["dnn"]["n_val"] == 20_000
    assert -1.0 <= summary["human_dnn_rsa_pearson"] <= 1.0
    # Fits from one shared random start correlate at about 0.84 after 3
    # epochs. Distinct seeds leave the two matrices nearly unrelated.
    assert summary["fit_seeds"]["human"] != summary["fit_seeds"]["dnn"]
    assert abs(summary["human_dnn_rsa_pearson"]) < 0.5
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    text = format_summary(summary)
    assert "Shortened for the demo" in text
    assert "--max-epochs 1000" in text


def test_fit_seeds_distinct_and_stable():
    seeds = fit_seeds(0)
    assert seeds["human"] != seeds["dnn"]
    assert seeds == fit_seeds(0)
    assert fit_seeds(1) != seeds


def test_demo_cli_reports_missing_files_without_download(tmp_path, capsys):
    # An empty data directory with downloads impossible (no network in tests)
    # must fail with a message naming the file, not a traceback.
    empty = tmp_path / "empty"
    empty.mkdir()
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    status = main(["demo", "--data-dir", str(empty), "--mirror", str(mirror), "--no-download", "-o", str(tmp_path / "out")])
    assert status == 1
    assert "unique_id.txt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_cuda_without_gpu_leaves_no_output_folder(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        run_demo(tmp_path / "out", data_dir=tmp_path, settings=DemoSettings(device="cuda"), download=False)
    assert not (tmp_path / "out").exists()
