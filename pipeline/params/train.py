"""The `train:` section. It is defined once, by the library that runs it (`fixclip.train.config`): the schema here is
that model, so a key, a default or a check cannot drift between params.yaml's validation and the training code."""
from fixclip.train.config import BaseModelConfig as BaseModelParams
from fixclip.train.config import TrainConfig as TrainParams

__all__ = ["BaseModelParams", "TrainParams"]
