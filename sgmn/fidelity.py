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
               "Eq. 22 weights L_g by beta1 = 0.7; the code sums every loss with weight 1."),
    Difference(("sgmn", "beta2"), 0.3, 1.0,
               "Eq. 22 weights L_m by beta2 = 0.3; the code sums every loss with weight 1."),
    Difference(("sgmn", "kl_weight"), 1.0, 10.0,
               "Eq. 16 adds the KL term as is; the code multiplies it by 10."),
    Difference(("sgmn", "triplet"), "hardest", "distance_weighted",
               "The paper's triplet is VSE++ (hardest in-batch negative); the code draws one negative "
               "per anchor by distance-weighted sampling and sums the hinges."),
    Difference(("sgmn", "text_loss"), "triplet", "infonce",
               "Eq. 5 uses lambda x triplet on ASR/title; the code uses a one-way ASR->title InfoNCE "
               "(tau 0.01) with weight 1."),
    Difference(("sgmn", "text_filter"), "shared", "separate",
               "Eq. 4 applies one filter layer to both texts; the code has fc_asr and fc_title."),
    Difference(("sgmn", "intra_connection"), "intra", "cross",
               "V2V / I2I edges: the paper's intra-domain graphs (V.V^T, I.I^T as in HREM); the code "
               "selects them with the cross-modal V.I^T and I.V^T."),
    Difference(("sgmn", "relevance_profile"), "raw", "l2",
               "Eq. 10 scores the frame-image similarities; the code L2-normalises the profile over "
               "frames first, keeping its shape but not its magnitude."),
    Difference(("sgmn", "batch_linear"), True, False,
               "Eq. 11's batch linear layer (Linear-ReLU-Linear across the batch) does not exist in the code."),
    Difference(("sgmn", "gci_attention"), "two_stage", "joint",
               "Fig. 4 / Eqs. 13-14: cross-domain attention, then intra-domain attention + FFN; the "
               "code runs one post-LN encoder layer over the 2N nodes with a block mask."),
    Difference(("sgmn", "kl_target"), "similarity", "exp_neg_distance",
               "Eq. 16 matches the relevance to H (the similarities); the code uses exp(-||V-I||)."),
    Difference(("sgmn", "smf_k_counts_positive"), False, True,
               "Eq. 17 selects K = 4 hard samples; the code's K = 4 counts the positive (3 negatives)."),
    Difference(("sgmn", "smf_symmetric"), True, False,
               "Eq. 21 is a symmetric cross-entropy; the code matches image->video only."),
    Difference(("sgmn", "smf_pool"), "avg", "cls",
               "Eq. 21 average-pools the cross-attended tokens; the code pools token 0 (CrossPooler)."),
    Difference(("train", "optimizer"), "adam", "bertadam",
               "The paper uses Adam; the code uses BertAdam (betas 0.9/0.98, eps 1e-6, no bias "
               "correction, decoupled weight decay, none on biases)."),
    Difference(("train", "weight_decay"), 0.01, 0.2,
               "The paper does not state weight decay (the suite uses 0.01); the code uses 0.2."),
    Difference(("train", "clip_lr_scale"), 1.0, 0.001,
               "The paper fine-tunes CLIP at lr 3e-4; the code trains CLIP at lr x 1e-3 = 3e-7."),
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
