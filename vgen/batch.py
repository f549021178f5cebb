"""Batch files: a YAML list of jobs and/or a prompts file, one video per prompt x seed.

```yaml
defaults:            # keys of any job, applied to every job
  model: {id: toy}
  sampler: {steps: 20}
jobs:                # explicit jobs (each a partial job config)
  - prompt: a red circle moving left
  - {prompt: a blue square moving up, method: vico, seed: 3}
prompts: prompts.txt # one prompt per line ('#' starts a comment); relative to this file
seeds: [0, 1]        # seeds for the prompts file (default [0])
```
A job whose config is wrong becomes a failed item; the other jobs still run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from vgen.config import JobConfig, load_yaml, parse_overrides, resolve
from vgen.errors import ConfigError, VgenError

BATCH_KEYS = ("defaults", "jobs", "prompts", "seeds")


@dataclass
class BatchItem:
    label: str  # what the summary shows for this job
    job: Optional[JobConfig] = None
    error: str = ""  # set when the job's config is wrong


def read_prompts(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"prompts file '{path}' not found")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def load_batch(path: str | Path, overrides: Iterable[str] = ()) -> list[BatchItem]:
    path = Path(path)
    spec = load_yaml(path)
    unknown = [k for k in spec.keys() if k not in BATCH_KEYS]
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}' in batch file '{path}'; valid keys: {', '.join(BATCH_KEYS)}")
    defaults = spec.get("defaults") or OmegaConf.create({})
    if not isinstance(defaults, DictConfig):
        raise ConfigError(f"'defaults' in '{path}' must be a mapping of job keys")
    cli = parse_overrides(overrides)

    entries: list[tuple[str, Any]] = []
    jobs = spec.get("jobs") or []
    if not isinstance(jobs, (ListConfig, list)):
        raise ConfigError(f"'jobs' in '{path}' must be a list")
    for i, job in enumerate(jobs, 1):
        if isinstance(job, str):
            job = OmegaConf.create({"prompt": job})
        entries.append((f"job {i}", job))
    if spec.get("prompts"):
        seeds = spec.get("seeds") or [0]
        if not isinstance(seeds, (ListConfig, list)) or not all(isinstance(s, int) for s in seeds):
            raise ConfigError(f"'seeds' in '{path}' must be a list of integers")
        for prompt in read_prompts(path.parent / str(spec.prompts)):
            for seed in seeds:
                entries.append((f"{prompt!r} seed {seed}", OmegaConf.create({"prompt": prompt, "seed": seed})))
    if not entries:
        raise ConfigError(f"batch file '{path}' has no jobs (give 'jobs' and/or 'prompts')")

    items = []
    for label, entry in entries:
        if not isinstance(entry, DictConfig):
            items.append(BatchItem(label, error=f"{label} must be a mapping of job keys or a prompt string"))
            continue
        try:
            job = resolve([(defaults, f"{path} defaults"), (entry, f"{path} {label}"), (cli, "overrides")])
            items.append(BatchItem(label, job=job))
        except VgenError as err:
            items.append(BatchItem(label, error=str(err)))
    return items
