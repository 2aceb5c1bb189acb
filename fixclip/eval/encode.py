"""Batched, cached encoding of images and texts for evaluation (progress bars, no gradients).

Texts are tokenised at the model's own context (77 for a plain CLIP, 248 after the stretch: longer captions are
truncated there, or earlier when a benchmark sets ``max_text_tokens``) and encoded in batches of similar length, so ``FixClip``'s padding trim runs short captions on
short sequences. Embeddings are cached per model for the whole run, keyed by image path or text, so benchmarks that
share images (the toy long / short / zero-shot tasks) encode each image once per model.
"""
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..model import FixClip
from ..text_stretch import long_tokenizer


class _ImageFiles(Dataset):
    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB"))


def eval_transform(model: FixClip):
    """open_clip's evaluation transform at the model's image size (resize shorter side, centre crop, normalise),
    with the preprocessing a loaded checkpoint attached (mean/std, interpolation), else open_clip's OpenAI defaults."""
    return image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(model.clip)), is_train=False)


class CachedEncoder:
    """Encodes with one model, on the device its parameters are on; remembers every embedding it computed
    (L2-normalised, float32, CPU)."""

    def __init__(self, model: FixClip, name: str, batch_size: int = 64, workers: int = 0):
        self.model, self.name = model.eval(), name
        self.device = next(model.parameters()).device
        self.context_length = model.context_length
        self.batch_size, self.workers = batch_size, workers
        self.transform = eval_transform(model)
        self._images: dict[str, torch.Tensor] = {}
        self._texts: dict[tuple[str, int], torch.Tensor] = {}

    def images(self, paths: list[Path]) -> torch.Tensor:
        """[N, D] embeddings of the image files, in order."""
        keys = [str(p) for p in paths]
        missing = sorted(set(keys) - self._images.keys())
        if missing:
            loader = DataLoader(_ImageFiles([Path(k) for k in missing], self.transform), batch_size=self.batch_size,
                                num_workers=self.workers)
            rows = []
            with torch.inference_mode():
                for batch in tqdm(loader, desc=f"{self.name}: images", unit="batch", leave=False):
                    rows.append(F.normalize(self.model.encode_image(batch.to(self.device)).float(), dim=-1).cpu())
            self._images.update(zip(missing, torch.cat(rows)))
        return self._stack([self._images[k] for k in keys])

    def _stack(self, rows: list[torch.Tensor]) -> torch.Tensor:
        """[N, D]; [0, D] for no input."""
        return torch.stack(rows) if rows else torch.empty(0, self.model.clip.visual.output_dim)

    def texts(self, texts: list[str], max_tokens: int | None = None) -> torch.Tensor:
        """[N, D] embeddings of the texts, in order, each read up to the model's context or ``max_tokens``."""
        context = self.context_length if max_tokens is None else min(max_tokens, self.context_length)
        missing = sorted(set(texts) - {text for text, n in self._texts if n == context})
        if missing:
            tokens = long_tokenizer(context)(missing)
            tokens = F.pad(tokens, (0, self.context_length - context))  # zeros are padding
            order = torch.argsort((tokens != 0).sum(dim=1), descending=True, stable=True)
            with torch.inference_mode():
                for start in tqdm(range(0, len(missing), self.batch_size), desc=f"{self.name}: texts",
                                  unit="batch", leave=False):
                    chosen = order[start:start + self.batch_size]
                    embedded = self.model.encode_text(tokens[chosen].to(self.device))
                    embedded = F.normalize(embedded.float(), dim=-1).cpu()
                    self._texts.update(zip(((missing[i], context) for i in chosen.tolist()), embedded))
        return self._stack([self._texts[(t, context)] for t in texts])
