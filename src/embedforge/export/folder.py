"""The one way to open an export folder: its manifest, the graph of a precision, an ONNX Runtime session.

Offline use (``OnnxEncoder``: eval, parity) and the server (``serve.runtime.OnnxRuntime``) both open the
folder here, so they read the same manifest file, pick the same graph and configure sessions alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from embedforge.errors import EmbedforgeError

EXPORT_FILE = "embedforge_export.json"
MODEL_FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx", "fp16": "model_fp16.onnx"}
PRECISIONS = tuple(MODEL_FILES)
INPUT_NAMES = ("input_ids", "attention_mask")
DIMENSIONS_INPUT, OUTPUT_NAME = "dimensions", "embeddings"
_GENERIC_NAMES = {"model", "onnx", "export", "checkpoint"}


class ExportFolderError(EmbedforgeError, ValueError):
    """A folder that is not an export, or an export without the graph asked for."""


def display_name(source: str | Path) -> str:
    """A known short name as is; a folder's name, or ``parent-name`` for generic ones (``runs/tuned/model``)."""
    if os.sep not in str(source) and not Path(source).exists():
        return str(source)  # a known short name such as "minilm", or a BiEncoder's label
    path = Path(source).resolve()
    if path.name in _GENERIC_NAMES and path.parent.name:
        return f"{path.parent.name}-{path.name}"
    return path.name


def is_export_folder(path: str | Path) -> bool:
    """True when ``path`` holds an export manifest (``embedforge_export.json``)."""
    return (Path(str(path)) / EXPORT_FILE).is_file()


class ExportFolder:
    """An export folder opened once: ``manifest`` (the parsed ``embedforge_export.json``) and its graphs.

    Raises ``ExportFolderError`` when the folder has no manifest.
    """

    def __init__(self, folder: str | Path):
        self.path = Path(folder)
        manifest = self.path / EXPORT_FILE
        if not manifest.is_file():
            raise ExportFolderError(f"{self.path} is not an embedforge export folder (no {EXPORT_FILE})")
        self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        self.files: dict[str, str] = {
            k: v for k, v in (self.manifest.get("files") or {"fp32": MODEL_FILES["fp32"]}).items() if v
        }

    def graph(self, precision: str = "fp32") -> Path:
        """The graph file of ``precision`` (``fp32``, ``int8``, ``fp16``) as the manifest records it."""
        if precision not in PRECISIONS:
            raise ExportFolderError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if precision not in self.files:
            raise ExportFolderError(
                f"export {self.path} has no '{precision}' model; it has {sorted(self.files)}"
            )
        graph = self.path / self.files[precision]
        if not graph.is_file():
            raise ExportFolderError(f"{graph} is listed in {EXPORT_FILE} but missing")
        return graph

    def session(self, precision: str = "fp32", *, threads: int = 0, spin: bool = True):
        """A CPU ``InferenceSession`` on the graph of ``precision``.

        ``threads``: intra-op threads (0: ONNX Runtime's choice). ``spin=False`` stops idle workers from
        busy-waiting, which a server wants: between batches they would take the CPU from the event loop and
        the tokenizer thread.
        """
        import onnxruntime as ort

        graph = self.graph(precision)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the optional `dimensions` input makes onnxruntime warn on every load
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def tokenizer(self):
        """The saved tokenizer, with the padding and truncation sides the export recorded."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        for key in ("padding_side", "truncation_side"):  # as recorded at export, whatever the reload says
            if self.manifest.get(key):
                setattr(tokenizer, key, self.manifest[key])
        return tokenizer

    @property
    def model_name(self) -> str:
        return self.manifest.get("model_name") or display_name(self.path)

    @property
    def prompts(self) -> dict[str, str]:
        prompts = self.manifest.get("prompts") or {}
        return {"query": prompts.get("query") or "", "passage": prompts.get("passage") or ""}
