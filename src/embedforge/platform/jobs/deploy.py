"""A deployment's child process: export the model to ONNX once, then serve it with ``embedforge serve``.

``python -m embedforge.platform.jobs.deploy WORKDIR`` reads WORKDIR/spec.json. The export (pooling and
normalisation in the graph, parity-checked against PyTorch, int8 when the config asks) is kept in
WORKDIR/onnx, so a restarted platform brings a ready deployment back without exporting again. An export
that fails writes WORKDIR/error.json and exits 2.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from embedforge.atomic import write_json_atomic
from embedforge.errors import EmbedforgeError
from embedforge.platform.jobs.lifeline import hold


def main(argv: list[str]) -> int:
    from embedforge.config import ExportConfig, build_config
    from embedforge.export import run_export
    from embedforge.serve.server import serve

    hold()  # exit when the platform does
    workdir = Path(argv[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    spec = json.loads((workdir / "spec.json").read_text())
    onnx = workdir / "onnx"
    try:
        if not (onnx / "model.onnx").exists():
            values = {"model": spec["model_dir"], "out": str(onnx), "model_name": spec["served_model_name"]}
            if spec.get("precision") == "int8":
                values["quantize"] = "int8"
            run_export(build_config(ExportConfig, values, "deployment"))
    except (EmbedforgeError, ValueError, FileNotFoundError) as err:
        write_json_atomic(workdir / "error.json", {"message": f"export failed: {err}"})
        logging.error("%s", err)
        return 2
    serve(
        str(onnx),
        host="127.0.0.1",
        port=spec["port"],
        served_model_name=spec["served_model_name"],
        precision=spec.get("precision") or "fp32",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
