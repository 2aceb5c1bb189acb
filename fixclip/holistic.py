"""Holistic CLIP ("Advancing Myopia To Holism", Wang et al., CVPR 2025) as model additions plus loss on ``FixClip``.

* Data: K_txt captions per image, one from each of K_txt prompts.
* Image tower with K_img class tokens (the multi-CLS design): the pretrained CLS plus K_img - 1 extra class tokens,
  each initialised from the pretrained class embedding and given its own positional row, a copy of CLS's. Class
  tokens do not attend to one another; patches attend to all of them. Each is pooled through ln_post and proj, so an
  image has K_img embeddings.
* Multi-to-multi loss: for every caption index i, a symmetric InfoNCE between the i-th captions and the images seen
  through the branch assigned to them, averaged over i; plus a hinge that keeps the branches apart.
* Text tower: the single-caption tower with Long-CLIP's stretch, shared with the other methods.

Assignment of a branch to caption i of sample s:
  * caption i < K_img when K_img <= K_txt (so every caption when the counts match): branch i, one-to-one;
  * every other caption: the branch of image s with the highest cosine to caption s (best-branch matching).

``encode_image`` returns one embedding, the mean of the L2-normalised branch embeddings, so that evaluation stays a
single-vector protocol run by the same code as for the other methods. It is what the public evaluation computes:
averaging per-branch cosine logits equals the dot product with this mean, so zero-shot predictions and image->text
rankings agree exactly; once the mean is re-normalised (``normalize=True``, as our evaluation does), text->image
rankings can differ, images' means having different norms. We read the public code, not the paper's full text, for
this; no other evaluation rule was found in the code.

Facts taken from the public code, github.com/anakin-skywalker-Joseph/Holistic-CLIP (read, not copied):
  * src_cls/open_clip/model/multi_cls_transformer.py, ``VisionTransformer``: class_embedding [cls_num, width] and
    positional rows for all cls_num tokens; a boolean attention mask forbids class token i -> class token j != i,
    patches are unmasked; ln_post on the tokens, the first cls_num taken and multiplied by proj.
  * src_cls/train.sh: training from scratch (no pretrained weights), so initialising the extra tokens from the
    pretrained CLS is our fine-tuning choice. Identical copies give identical branches at the start; the
    one-to-one captions are what tells them apart.
  * src_cls/open_clip/loss_modify.py, ``ClipLoss.logits_assign_hard`` / ``gather_logits``: the assignment rule
    above; image row r uses image r's best branch, caption row c compares caption c with every image through
    caption c's best branch; the cross-branch "full" logits are computed but set to None (unused); the
    cross-entropy runs over the rows of all captions at once (= mean over captions); no label smoothing.
  * same file, ``ClipLoss.forward``: ``rank_loss`` = max(0, mean off-diagonal cosine between branches - 0.7),
    weight 1, whenever cls_num > 1 (its ``epoch < 200`` guard always holds for train.sh's 100 epochs despite a
    "not used" comment); src_cls/training/train_multi.py sums every returned loss.
  * src_cls/training/zero_shot.py and train_multi.py ``gather_logits``: evaluation averages the per-branch logits.
  * src_cls/train.sh: ``--local-loss --gather-with-grad``; local rows against gathered columns give, after DDP's
    gradient averaging, the gradient of the global loss that ``HolisticLoss`` computes on every rank. The repo
    takes the branch hinge over each rank's batch; here it is taken over the gathered batch.
"""
from pathlib import Path
from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F
from open_clip.loss import gather_features
from torch import nn

from .base_model import ModelRef
from .checkpoint_formats import load_clip
from .config import FixClipConfig, HolisticConfig
from .longclip import stretched_text_config
from .model import FixClip
from .trainable import Method


def branch_attention_mask(num_branches: int, num_patches: int) -> torch.Tensor:
    """Float [K + N, K + N] additive mask (row = query): -inf where a class token would attend another one."""
    size = num_branches + num_patches
    mask = torch.zeros(size, size)
    other_class_token = ~torch.eye(num_branches, dtype=torch.bool)
    mask[:num_branches, :num_branches].masked_fill_(other_class_token, float("-inf"))
    return mask


def assign_branches(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Long [B, K_txt]: the branch (of K_img) each caption of each sample is matched through (rule in the module
    docstring). image [B, K_img, D], text [B, K_txt, D], both L2-normalised."""
    k_img, k_txt = image.shape[1], text.shape[1]
    with torch.no_grad():
        own_image_cosine = torch.einsum("bkd,bcd->bck", image, text)  # [B, K_txt, K_img]
        branch = own_image_cosine.argmax(dim=-1)
    if k_img <= k_txt:
        branch[:, :k_img] = torch.arange(k_img, device=branch.device)
    return branch


def caption_nce(image: torch.Tensor, caption: torch.Tensor, branch: torch.Tensor, logit_scale: torch.Tensor,
                label_smoothing: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE of one caption per sample ([B, D]) against images [B, K_img, D] seen through ``branch``
    ([B]): image row r through branch[r]; caption row c against every image through branch[c]."""
    rows = torch.arange(image.shape[0], device=image.device)
    logits = logit_scale * torch.einsum("rkd,cd->krc", image, caption)  # [K_img, images, captions]
    per_image = logits[branch, rows]  # [r, c] = logits[branch[r], r, c]
    per_text = logits[branch[:, None], rows[None, :], rows[:, None]]  # [c, r] = logits[branch[c], r, c]
    return (F.cross_entropy(per_image, rows, label_smoothing=label_smoothing)
            + F.cross_entropy(per_text, rows, label_smoothing=label_smoothing)) / 2


def branch_similarity_hinge(image: torch.Tensor, margin: float) -> torch.Tensor:
    """max(0, mean cosine between different branches of an image - margin), image [B, K_img, D] normalised."""
    cosine = (image @ image.transpose(1, 2)).mean(dim=0)  # [K_img, K_img]
    off_diagonal = ~torch.eye(cosine.shape[0], dtype=torch.bool, device=cosine.device)
    return F.relu(cosine[off_diagonal].mean() - margin)


class HolisticClip(FixClip):
    """Holistic CLIP: K_img class tokens in the image tower, the stretched single-caption text tower."""

    def __init__(self, clip: nn.Module, cfg: HolisticConfig = HolisticConfig(),
                 fixclip: FixClipConfig = FixClipConfig()):
        super().__init__(clip, stretched_text_config(fixclip))
        visual = clip.visual
        if (not isinstance(visual.patch_dropout, nn.Identity) or visual.attn_pool is not None
                or visual.pool_type != "tok"):
            raise ValueError("holistic: the multi-CLS image tower needs class-token pooling, no attentional pooling "
                             "and no patch dropout")
        self.method_cfg = cfg
        extra = cfg.num_branches - 1
        self.extra_class_embedding = nn.Parameter(visual.class_embedding.detach().expand(extra, -1).clone())
        self.extra_class_positions = nn.Parameter(visual.positional_embedding.detach()[:1].expand(extra, -1).clone())
        mask = branch_attention_mask(cfg.num_branches, self.num_patches) if extra else None
        self.register_buffer("branch_attn_mask", mask, persistent=False)

    @classmethod
    def from_pretrained(cls, model: ModelRef, weights: Union[str, Path], cfg: HolisticConfig = HolisticConfig(),
                        fixclip: FixClipConfig = FixClipConfig()) -> "HolisticClip":
        return cls(load_clip(model, weights), cfg, fixclip)

    def encode_image_branches(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """[B, K_img, D]: one embedding per class token."""
        visual = self.clip.visual
        embedded = self._image_embed(image)  # [B, 1 + N, width], CLS first
        extra = (self.extra_class_embedding + self.extra_class_positions).to(embedded.dtype)
        x = torch.cat([embedded[:, :1], extra.expand(embedded.shape[0], -1, -1), embedded[:, 1:]], dim=1)
        x = visual.transformer(visual.ln_pre(x), attn_mask=self.branch_attn_mask)
        branches = visual.ln_post(x[:, :self.method_cfg.num_branches])
        if visual.proj is not None:
            branches = branches @ visual.proj
        return F.normalize(branches, dim=-1) if normalize else branches

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """[B, D]: the mean of the L2-normalised branch embeddings (see the module docstring)."""
        mean = self.encode_image_branches(image, normalize=True).mean(dim=1)
        return F.normalize(mean, dim=-1) if normalize else mean

    def forward(self, images: torch.Tensor, caption_tokens: torch.Tensor,
                short_tokens: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Features for ``HolisticLoss`` from images [B, 3, H, W] and caption tokens [B, K_txt, L]:
        image_features [B, K_img, D] and text_features [B, K_txt, D], L2-normalised, and logit_scale.
        ``short_tokens`` (the train loop's third column) is not used: Holistic CLIP has no short branch."""
        batch, captions = caption_tokens.shape[:2]
        if captions != self.method_cfg.captions_per_image:
            raise ValueError(f"holistic: got {captions} captions per image, captions_per_image is "
                             f"{self.method_cfg.captions_per_image}")
        text = self.encode_text(caption_tokens.flatten(0, 1), normalize=True).unflatten(0, (batch, captions))
        return {"image_features": self.encode_image_branches(images, normalize=True), "text_features": text,
                "logit_scale": self.logit_scale.exp()}


class HolisticLoss(nn.Module):
    """Maps the output dict of ``HolisticClip.forward`` to {"loss": total, "contrastive": .., "diversity": ..}
    ("diversity", the branch hinge, only with K_img > 1 and a margin). Global over ranks when world_size > 1."""

    def __init__(self, label_smoothing: float = 0.0, branch_similarity_margin: Optional[float] = 0.7,
                 rank: int = 0, world_size: int = 1):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.branch_similarity_margin = branch_similarity_margin
        self.rank = rank
        self.world_size = world_size

    @classmethod
    def from_config(cls, cfg: HolisticConfig, rank: int = 0, world_size: int = 1) -> "HolisticLoss":
        return cls(cfg.label_smoothing, cfg.branch_similarity_margin, rank, world_size)

    def forward(self, out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        image, text, scale = out["image_features"], out["text_features"], out["logit_scale"]
        if self.world_size > 1:
            image, text = gather_features(image, text, gather_with_grad=True, rank=self.rank,
                                          world_size=self.world_size)
        branch = assign_branches(image, text)
        contrastive = torch.stack([caption_nce(image, text[:, i], branch[:, i], scale, self.label_smoothing)
                                   for i in range(text.shape[1])]).mean()
        parts = {"contrastive": contrastive}
        total = contrastive
        if self.branch_similarity_margin is not None and image.shape[1] > 1:
            parts["diversity"] = branch_similarity_hinge(image, self.branch_similarity_margin)
            total = total + parts["diversity"]
        parts["loss"] = total
        return parts


# train.method: holistic (fixclip.methods); built as HolisticClip(clip, section, the fixclip section)
METHOD = Method(HolisticClip, HolisticLoss, HolisticClip)
