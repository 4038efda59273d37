"""Paper vs official code: every difference in one table, resolved into the config.

`fidelity: paper` takes the recipe the paper states; `fidelity: official` takes what the
authors' public code actually does (sgmn_method.md), never its bugs (BUG_FIXES: they are fixed
in both modes). Each difference is its own config key whose schema default is null; a null key
follows `fidelity`, an explicit value wins, so one difference can be measured alone.
docs/fidelity.md is checked against this table by the tests.
"""
from __future__ import annotations

from typing import NamedTuple


class Difference(NamedTuple):
    key: tuple[str, str]   # (section, key) in the config
    paper: object
    official: object
    what: str


DIFFERENCES: list[Difference] = [
    Difference(("sgmn", "beta1"), 0.7, 1.0,
               "Eq. 22 weights L_g by beta1 = 0.7; the code sums every loss with weight 1 (train.py:306)."),
    Difference(("sgmn", "beta2"), 0.3, 1.0,
               "Eq. 22 weights L_m by beta2 = 0.3; the code sums every loss with weight 1 (train.py:306)."),
    Difference(("sgmn", "kl_weight"), 1.0, 10.0,
               "Eq. 16 adds the KL term as is; the code multiplies it by 10 (graph_loss.py:351)."),
    Difference(("sgmn", "triplet"), "hardest", "distance_weighted",
               "The paper's triplet is VSE++ (hardest in-batch negative); the code draws one negative "
               "per anchor by distance-weighted sampling and sums the hinges (graph_loss.py:205-232)."),
    Difference(("sgmn", "text_loss"), "triplet", "infonce",
               "Eq. 5 uses lambda x triplet on ASR/title; the code uses a one-way ASR->title InfoNCE "
               "(tau 0.01) with weight 1 (modeling_sgmn.py:824-826)."),
    Difference(("sgmn", "text_filter"), "shared", "separate",
               "Eq. 4 applies one filter layer to both texts; the code has fc_asr and fc_title "
               "(modeling_sgmn.py:701-702)."),
    Difference(("sgmn", "intra_connection"), "intra", "cross",
               "V2V / I2I edges: the paper's intra-domain graphs (V.V^T, I.I^T as in HREM); the code "
               "selects them with the cross-modal V.I^T and I.V^T (mca.py:224-229)."),
    Difference(("sgmn", "relevance_profile"), "raw", "l2",
               "Eq. 10 scores the frame-image similarities; the code L2-normalises the profile over "
               "frames first, keeping its shape but not its magnitude (mca.py:110)."),
    Difference(("sgmn", "batch_linear"), True, False,
               "Eq. 11's batch linear layer (Linear-ReLU-Linear across the batch) does not exist in the "
               "code (the relation feeds the mask directly, graph_loss.py:314)."),
    Difference(("sgmn", "gci_attention"), "two_stage", "joint",
               "Fig. 4 / Eqs. 13-14: cross-domain attention, then intra-domain attention + FFN; the "
               "code runs one post-LN encoder layer over the 2N nodes with a block mask "
               "(graph_loss.py:263-265, 323)."),
    Difference(("sgmn", "kl_target"), "frame_similarity", "exp_neg_distance",
               "Eq. 16's H is the frame-level similarity S_V S_I^T (averaged over a clip's real "
               "frames); the code uses exp(-||V-I||) of the pooled embeddings (mca.py:178)."),
    Difference(("sgmn", "kl_graph"), "graph", "relevance",
               "Eq. 16 compares the graph G = R x C (Eq. 12: the relevance on the graph's edges); "
               "the code compares the relation R over every pair (mca.py:180-184)."),
    Difference(("sgmn", "kl_reference"), "target", "graph",
               "Eq. 16's K(G, H) read as F.kl_div(G, H) is KL(P_H || P_G); the code calls "
               "F.kl_div(log_softmax(H), softmax(R)) = KL(P_R || P_H), the gradient reaching R "
               "through the reference distribution (mca.py:191-194)."),
    Difference(("sgmn", "connect_count"), "frames", "batch",
               "Eq. 8's K = L/2 counts frames (the paper's L is the frame count); the code keeps "
               "the top half of the global batch (mca.py:247, threshold 0.5 x N)."),
    Difference(("sgmn", "gci_heads"), 8, 16,
               "The paper does not give GCI's heads (the suite uses 8); the code's graph encoder "
               "layer has 16 (graph_loss.py:263-265)."),
    Difference(("sgmn", "smf_k_counts_positive"), False, True,
               "Eq. 17 selects K = 4 hard samples; the code's K = 4 counts the positive (3 negatives)."),
    Difference(("sgmn", "smf_symmetric"), True, False,
               "Eq. 21 is a symmetric cross-entropy; the code matches image->video only."),
    Difference(("sgmn", "smf_pool"), "avg", "cls",
               "Eq. 21 average-pools the cross-attended tokens; the code pools token 0 (CrossPooler)."),
    Difference(("sgmn", "smf_normalize"), False, True,
               "The paper fuses the features as they are; the code L2-normalises the visual tokens "
               "and the texts before SMF's fusion (modeling_sgmn.py:732-736)."),
    Difference(("sgmn", "smf_fusion_dropout"), 0.0, 0.1,
               "The paper gives no dropout (the suite uses none); the code's fusion layer drops "
               "0.1 on the attention weight, in the FFN and on both residuals "
               "(modeling_sgmn.py:321, module_mofusion.py:55,131,322,329)."),
    Difference(("sgmn", "init"), "default", "official",
               "The paper gives no initialisation (PyTorch's defaults); the code draws every new "
               "Linear and Embedding from N(0, 0.02) with zero bias (modeling_sgmn.py:337, "
               "until_module.py:71-86) and copies CLIP's text layer 0 and positions into the "
               "cross-encoder (modeling_sgmn.py:140-157)."),
    Difference(("sgmn", "dw_dim"), "embedding", 512,
               "Distance-weighted sampling's density uses the embedding's own dimension (the paper "
               "has no such sampling); the code hard-codes d = 512 (graph_loss.py:95-99)."),
    Difference(("train", "optimizer"), "adam", "bertadam",
               "The paper uses Adam; the code uses BertAdam (betas 0.9/0.98, eps 1e-6, no bias "
               "correction, decoupled weight decay, none on biases; train.py:233-237)."),
    Difference(("train", "weight_decay"), 0.01, 0.2,
               "The paper does not state weight decay (the suite uses 0.01); the code uses 0.2 "
               "(train.py:233-237)."),
    Difference(("train", "clip_lr_scale"), 1.0, 0.001,
               "The paper fine-tunes CLIP at lr 3e-4; the code trains CLIP at lr x 1e-3 = 3e-7 "
               "(train.py:227, 229)."),
    Difference(("train", "lr_schedule"), "cosine", "warmup_cosine_progress",
               "The paper decays by a cosine schedule (the suite: warmup_steps, then a cosine over "
               "the rest); the code's BertAdam warms up over 10% of the steps, then follows "
               "0.5 (1 + cos(pi x)) of the whole run's progress x (train.py:60,233-237)."),
    Difference(("train", "freeze_stem"), False, True,
               "The code freezes the patch embedding, class/position embeddings and ln_pre."),
    Difference(("train", "frame_mask_mode"), "random", "tail",
               "Frame masking drops random frames (the paper's augmentation); the code drops the "
               "last frames, and only when the data path contains 'training' (not on MF)."),
]

BUG_FIXES: list[str] = [
    "SMF cross-entropy: the code takes torch.diag of an (N, 4) logit matrix, so rows 1-3 target "
    "a hard negative and all other rows are ignored; here every row targets its positive.",
    "TMC attention mask: the code repeats the (B, T, T) mask head-major while "
    "nn.MultiheadAttention reads it batch-major, so in training sample b gets another sample's "
    "frame mask; here each sample's mask is its own (repeat_interleave).",
    "All-zero text (MovingFashion, empty ASR): the code's normalisation gives 0/0 = NaN at step 1; "
    "here missing text has a zero text term and masks its text losses.",
    "I2V graph: the code's I->V relevance compares identical stacked image 'words', so it is a "
    "constant and its edges are decided by ties; here I->V uses the same frame-image profile as "
    "V->I, transposed.",
    "SMF positives: the code treats other clips of the same product in a batch as negatives; "
    "here hard negatives are drawn from other products only (also for every triplet).",
]


def apply_fidelity(config: dict) -> dict:
    """Fill every null key of DIFFERENCES from config['fidelity'] (in place; returns config)."""
    mode = config.get("fidelity", "paper")
    for diff in DIFFERENCES:
        section, key = diff.key
        block = config.setdefault(section, {})
        if block.get(key) is None:
            block[key] = diff.paper if mode == "paper" else diff.official
    return config
