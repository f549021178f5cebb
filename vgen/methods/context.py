"""What a runner gets besides the job and the model (jobs builds it; methods read it): imports run one way,
jobs -> methods."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from vgen.config import ModelConfig


@dataclass
class RunContext:
    """What a runner gets besides the job and the model: seeded randomness, where extras go, logging."""

    generator: Any  # torch.Generator seeded with job.seed (CPU)
    height: int
    width: int
    output_stem: Path  # outputs/<stem> (no suffix): runners may write "<stem>_anchor.png" etc.
    progress: Optional[bool] = None
    log: Callable[[str], None] = lambda message: None
    load_model: Optional[Callable[[ModelConfig], Any]] = None  # a second model (cached per batch), same device/dtype

    @property
    def mp4_path(self) -> Path:
        """Where the job's mp4 goes, for runners that stream frames into it (and return a WrittenVideo)."""
        return self.output_stem.with_suffix(".mp4")

    def model(self, cfg: ModelConfig):
        if self.load_model is None:
            raise RuntimeError("this RunContext cannot load models")
        return self.load_model(cfg)
