"""Run-wide state of the gate: the dataset, the replay results, the verdicts and the routes.

One :class:`BcloneSession` per pytest run (and per xdist worker). It is registered as a plugin so
it can see the session's hooks, but holds the logic itself; plugin.py only delegates here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from .config import BcloneConfig

if TYPE_CHECKING:
    from .dataset.store import DatasetVersion


class BcloneSession:
    """The gate's state for one pytest process."""

    def __init__(self, cfg: BcloneConfig, config: pytest.Config) -> None:
        self.cfg = cfg
        self.config = config
        self.root_source = (
            "ini bclone_dataset_root" if config.getini("bclone_dataset_root") else "the default bclone_dataset_root"
        )
        if cfg.dataset_root != "bclone_datasets" and config.getoption("bclone_dataset_root"):
            self.root_source = "--bclone-dataset-root"
        from .dataset.store import load_ref

        # Loaded (and every hash verified) at configure time, so a bad reference or a tampered
        # file stops the run with one clear line before any test runs.
        self.dataset: DatasetVersion = load_ref(
            cfg.dataset or "", cfg.dataset_root, cfg.rootdir, root_source=self.root_source
        )

    def header_lines(self) -> list[str]:
        d = self.dataset
        c = d.manifest["counts"]
        return [
            f"bclone: dataset {d.ref} ({c['trajectories']} trajectories, splits {c['splits']}) "
            f"sha256 {d.fingerprint}, evaluating split {self.cfg.split}",
        ]
