"""Contrastive pretraining of a small open_clip CLIP on a training catalogue (images + titles).

On LPR-Synth it plays the part of OpenAI's pretrained CLIP: an image-text model that has seen
product images with their descriptions, but never a livestream frame. Only the training
catalogue is used (test products stay unseen). Loss: open_clip's symmetric InfoNCE (ClipLoss)
with the learned temperature.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from open_clip.loss import ClipLoss
from torch.utils.data import Dataset
from torchvision.transforms import v2

from sgmn.data.augment import augment_batch
from sgmn.data.datasets import index_of, read_split
from sgmn.data.frames import CLIP_MEAN, CLIP_STD, read_image
from sgmn.models.clip import create_clip, get_tokenizer, save_clip
from sgmn.train import loop

log = logging.getLogger(__name__)


class CatalogueDataset(Dataset):
    """Unique (shop image, title) pairs of the training clips: the image decoded once, as uint8
    (3, S, S) (resized to the model's size S when it differs), and its tokenised title.
    Augmentation runs on the whole batch in the loss (sgmn.data.augment)."""

    def __init__(self, clips, image_size: int, tokenizer):
        items = {c.image_id: (c.image_path, c.title) for c in clips}
        self.items = [items[k] for k in sorted(items)]
        self.tokenizer, self.size = tokenizer, image_size
        self.cache: dict[int, dict] = {}

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        if i not in self.cache:
            path, title = self.items[i]
            rgb = torch.from_numpy(read_image(path).copy()).permute(2, 0, 1)  # (3, H, W) uint8
            if rgb.shape[1:] != (self.size, self.size):
                rgb = v2.functional.resize(rgb, [self.size, self.size], antialias=True)
            self.cache[i] = {"image": rgb, "text": self.tokenizer([title])[0]}
        return self.cache[i]


def collate(items):
    return {"image": torch.stack([it["image"] for it in items]), "text": torch.stack([it["text"] for it in items])}


def pretrain(config: dict, data_dir: str | Path, out: str | Path) -> Path:
    """Train the CLIP named by config.model.clip from scratch; save its state dict to `out`."""
    mcfg, pcfg, tcfg = config["model"], config["pretrain"], config["train"]
    out = Path(out)
    run_dir = out.parent / f"{out.stem}_run"
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(pcfg["seed"])
    model = create_clip(mcfg["clip"], "none", mcfg["image_size"])
    clips = read_split(data_dir, config["dataset"]["format"], "train", config["dataset"]["on_bad_line"],
                       index=index_of(config["dataset"]))
    dataset = CatalogueDataset(clips, mcfg["image_size"], get_tokenizer(mcfg["clip"]))
    log.info("catalogue: %d image-title pairs from %d training clips", len(dataset), len(clips))
    clip_loss = ClipLoss()

    def loss_fn(m, batch, generator):
        images = augment_batch(batch["image"], mcfg["image_size"], CLIP_MEAN.flatten().tolist(),
                               CLIP_STD.flatten().tolist(), generator)
        img = m.encode_image(images, normalize=True)
        txt = m.encode_text(batch["text"], normalize=True)
        return {"contrastive_loss": clip_loss(img, txt, m.logit_scale.exp().clamp(max=100))}

    batch_size = min(pcfg["batch_size"], len(dataset))
    loop.train(model, dataset, collate, loss_fn, run_dir, steps=pcfg["steps"], batch_size=batch_size,
               lr=pcfg["lr"], warmup_steps=pcfg["warmup_steps"], weight_decay=pcfg["weight_decay"],
               grad_clip=1.0, seed=pcfg["seed"], checkpoint_every=pcfg["checkpoint_every"],
               num_workers=tcfg["num_workers"], device=tcfg["device"], precision=tcfg["precision"],
               config={"model": mcfg, "pretrain": pcfg})
    model.to("cpu")
    save_clip(model, out)
    return out
