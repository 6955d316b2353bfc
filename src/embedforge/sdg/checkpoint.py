"""The sdg checkpoint: finished units appended one JSON line each, so an interrupted run resumes exactly.

Each unit is written once, fsynced, after all of its requests succeeded; the generation settings are kept
beside it, and a checkpoint made with other settings is refused rather than mixed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from embedforge.atomic import write_text_atomic
from embedforge.config import ConfigError

logger = logging.getLogger(__name__)

CHECKPOINT_FILE, META_FILE = "sdg_checkpoint.jsonl", "sdg_checkpoint.meta.json"


class Checkpoint:
    """Append-only JSONL of finished units, fsynced per unit, with the generation settings beside it.

    A torn last line (the process died mid-write) is cut off when the file is opened; a unit written twice
    keeps its first record.
    """

    def __init__(self, folder: Path, signature: dict[str, Any], resume: bool = True):
        self.path = folder / CHECKPOINT_FILE
        self.meta_path = folder / META_FILE
        folder.mkdir(parents=True, exist_ok=True)
        if not resume:
            for path in (self.path, self.meta_path):
                path.unlink(missing_ok=True)
        if self.path.exists() and self.path.stat().st_size:
            saved = json.loads(self.meta_path.read_text()) if self.meta_path.exists() else {}
            changed = sorted(k for k in set(saved) | set(signature) if saved.get(k) != signature.get(k))
            if changed:
                details = ", ".join(f"{k}: {saved.get(k)!r} -> {signature.get(k)!r}" for k in changed)
                raise ConfigError(
                    f"{self.path} was made with other generation settings ({details}); "
                    "use another out folder, or resume=false to delete it and start over"
                )
        write_text_atomic(self.meta_path, json.dumps(signature, indent=2) + "\n")
        self.records = self._load()

    def _load(self) -> dict[str, dict]:
        records: dict[str, dict] = {}
        if not self.path.exists():
            return records
        data = self.path.read_bytes()
        good_end = 0
        position = 0
        for line in data.splitlines(keepends=True):
            position += len(line)
            if not line.endswith(b"\n"):
                break  # torn write
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s: skipping an unreadable line at byte %d", self.path, position - len(line))
                good_end = position
                continue
            if isinstance(record, dict) and isinstance(record.get("unit"), str):
                records.setdefault(record["unit"], record)
            else:
                logger.warning(
                    "%s: skipping a line without a unit at byte %d", self.path, position - len(line)
                )
            good_end = position
        if good_end < len(data):
            logger.warning("%s: cutting off a torn last line (%d bytes)", self.path, len(data) - good_end)
            with self.path.open("r+b") as f:
                f.truncate(good_end)
        return records

    def append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.setdefault(record["unit"], record)
