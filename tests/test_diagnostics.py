"""sgmn diagnose: where each SGMN loss sends its gradient, measured on a short real run."""
import json

import pytest

from sgmn import config as cfg
from sgmn.cli import main
from sgmn.io import write_json

REPO = cfg.REPO_ROOT


@pytest.fixture(scope="module")
def sgmn_run(smoke_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    base = cfg.deep_merge(cfg.load_config(REPO / "workflow" / "config" / "smoke.yaml"), {
        "model": {"pretrained": "none"},
        "train": {"steps": 2, "batch_size": 8, "warmup_steps": 1, "device": "cpu"}})
    write_json(cfg.resolve_variant(base, "sgmn"), root / "cfg.json")
    assert main(["text-features", "--config", str(root / "cfg.json"), "--data", str(smoke_data),
                 "--clip-weights", "none", "--out", str(root / "text")]) == 0
    assert main(["train", "--config", str(root / "cfg.json"), "--seed", "0", "--data", str(smoke_data),
                 "--clip-weights", "none", "--text-features", str(root / "text"), "--out", str(root / "run"),
                 "--threads", "1"]) == 0
    return root


def test_each_loss_reaches_the_parts_it_should(sgmn_run, smoke_data):
    out = sgmn_run / "diag.json"
    assert main(["diagnose", "--run", str(sgmn_run / "run"), "--data", str(smoke_data),
                 "--text-features", str(sgmn_run / "text"), "--threads", "1", "--out", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert (run["variant"], run["seed"]) == ("sgmn", 0)
    for phase in ("init", "final"):
        g = run[phase]["grad_norm"]
        assert set(g) == {"similarity_loss", "text_loss", "graph_loss", "kl_loss", "matching_loss"}
        # the GRA triplet trains the visual tower and TMC, never the text filter
        assert g["similarity_loss"]["visual"] > 0 and g["similarity_loss"]["tmc"] > 0
        assert g["similarity_loss"]["text_filter"] == 0
        # the text triplet trains only the filter layer (the text tower is frozen and cached)
        assert g["text_loss"]["text_filter"] > 0 and g["text_loss"]["visual"] == 0
        # GCI and SMF shape the shared encoder through their losses; the KL term (Eq. 16, on
        # detached inputs) trains only the relevance
        assert g["graph_loss"]["visual"] > 0 and g["matching_loss"]["visual"] > 0
        assert g["kl_loss"]["visual"] == 0 and g["kl_loss"]["tmc"] == 0
        assert run[phase]["grad_share"]["similarity_loss"] == pytest.approx(1.0)
        assert g["similarity_loss"]["visual_cos_similarity_loss"] == pytest.approx(1.0, abs=1e-3)
        assert g["kl_loss"]["visual_cos_similarity_loss"] is None
        assert -1 <= g["matching_loss"]["visual_cos_similarity_loss"] < 0.999
        assert run[phase]["tmc"]["residual"] > 0 and -1 <= run[phase]["tmc"]["pooled_cos"] < 1
    assert run["losses"]["similarity_loss"]["last_step"] == 2
