"""The intended product's box per frame: which annotated box it is, and the emulated detector."""
from __future__ import annotations

import torch
from torchvision.ops import box_iou

from sgmn.data.datasets import ClipPairDataset, QueryDataset, boxes_tensor, detector_boxes, read_split, target_index
from sgmn.data.records import Clip


def test_target_index_reads_synth_meta_else_the_first_box():
    frame_boxes = [[[0, 0, .5, .5], [.5, .5, 1, 1]], [], [[.1, .1, .2, .2]]]
    index = torch.tensor([0, 1, 2, -1])
    _, counts = boxes_tensor(frame_boxes, index)
    real = Clip(video_id="v", live_id=None, frame_boxes=frame_boxes)          # real LPR4M: one box annotated
    assert target_index(real, index, counts).tolist() == [0, -1, 0, -1]
    synth = Clip(video_id="v", live_id=None, frame_boxes=frame_boxes, extra={"target_index": [1, -1, 0]})
    assert target_index(synth, index, counts).tolist() == [1, -1, 0, -1]


def test_detector_boxes_are_close_fixed_per_frame_and_independent_of_sampling():
    gt = torch.tensor([[0.2, 0.3, 0.6, 0.8]]).repeat(50, 1)
    frames = torch.arange(50)
    det = detector_boxes(gt, frames, 50, "clip-a")
    iou = box_iou(gt, det).diag()
    assert 0.6 < iou.min() and iou.max() < 1.0 and 0.7 < iou.median() < 0.9
    assert torch.equal(det, detector_boxes(gt, frames, 50, "clip-a"))              # deterministic
    assert not torch.equal(det, detector_boxes(gt, frames, 50, "clip-b"))          # per clip
    assert torch.equal(det[[3, 7]], detector_boxes(gt[[3, 7]], frames[[3, 7]], 50, "clip-a"))  # per frame


def test_batches_carry_the_detected_intended_box(smoke_data):
    clips = read_split(smoke_data, "lpr4m", "train")
    item = ClipPairDataset(clips, 4, 64)[0]
    assert item["target_box"].shape == (4, 4) and item["target_present"].dtype == torch.bool
    present = item["target_present"]
    assert (item["target_box"][~present] == 0).all()
    test = read_split(smoke_data, "lpr4m", "test")
    q = QueryDataset(test, 4, 64)[0]
    assert q["target_box"].shape == (4, 4) and q["target_present"].any()
