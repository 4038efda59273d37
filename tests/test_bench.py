"""The benchmark script (sgmn bench) measures what it says; no time is asserted here."""
import json

from sgmn import bench
from sgmn.cli import main


def test_bench_cases_train_the_configured_losses_and_count_parameters(tmp_path):
    out = bench.bench_scale("tiny", device="cpu", steps=1, repeats=1, threads=1, isolated=False)
    gra, full = out["cases"]["gra_only"], out["cases"]["sgmn"]
    assert gra["losses"] == ["similarity_loss"]
    assert full["losses"] == ["graph_loss", "kl_loss", "matching_loss", "similarity_loss", "text_loss"]
    assert (full["batch_size"], full["num_frames"], full["clip"]) == (32, 8, "lpr-tiny-clip")
    # GCI and SMF only shape training: the inference model is GRA + text filter + TMC
    assert gra["parameters"]["inference"] == gra["parameters"]["all"]
    assert gra["parameters"]["all"] < full["parameters"]["inference"] < full["parameters"]["all"]
    for case in (gra, full):
        assert case["train_step_ms"] > 0 and case["query_clip_ms"] > 0 and case["peak_memory_mb"] > 0
        assert 0 < case["score_ms"] and case["gallery"] == bench.GALLERY   # the scoring alone, timed
    assert set(out["sgmn_over_gra"]) == {"train_step", "query_clip", "peak_memory"}
    assert out["provenance"]["versions"]["torch"]


def test_vitb32_scale_is_the_papers_encoder_at_batch_8():
    c = bench.bench_config("vitb32", "sgmn", "cpu")
    assert (c["model"]["clip"], c["model"]["num_frames"], c["model"]["image_size"]) == ("ViT-B-32", 10, 224)
    assert (c["train"]["batch_size"], c["train"]["processes"]) == (8, 1)


def test_cli_writes_one_json_per_scale(tmp_path):
    assert main(["bench", "--scale", "tiny", "--variant", "gra_only", "--device", "cpu", "--steps", "1",
                 "--repeats", "1", "--threads", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sgmn_tiny_cpu.json").read_text())
    assert list(result["cases"]) == ["gra_only"] and "sgmn_over_gra" not in result
