"""sentence-transformers' ONNX int8 backend as a serving peer, run by ``serve_speed.py`` in its own venv.

sentence-transformers' ONNX backend needs optimum-onnx, whose release pins transformers below 4.58 while
embedforge pins transformers 5, so this script runs with another interpreter (``make bench-peers`` builds
``/tmp/stvenv`` from ``benchmarks/peers-st-onnx.txt``) and shares only the standard library and
``serve_speed.py``'s load driver with the main benchmark:

    export     copy a local sentence-transformers model, export it to ONNX and quantize it the way the
               sentence-transformers docs show (``backend="onnx"``, ``export_dynamic_quantized_onnx_model``)
    inprocess  ``SentenceTransformer(dir, backend="onnx", model_kwargs={"file_name": ...}).encode`` driven
               by the same client threads as every other system; prints the levels as JSON
    serve      the same model behind a minimal FastAPI ``POST /v1/embeddings`` (uvicorn on 127.0.0.1)

Nothing is read from a model hub: the model is a local directory and HF_HUB_OFFLINE is set.
"""

import argparse
import base64
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_speed import drive, load, proc_status  # noqa: E402


def versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("sentence-transformers", "optimum", "optimum-onnx", "onnxruntime", "transformers", "torch")
    return {name: version(name) for name in names}


def export(model: str, out: Path, config: str) -> dict:
    """``out``: the model with ``onnx/model.onnx`` (fp32) and ``onnx/model_qint8_<config>.onnx`` (int8)."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    t0 = time.monotonic()
    shutil.copytree(model, out)
    st = SentenceTransformer(str(out), backend="onnx", device="cpu")  # no ONNX file yet: optimum exports
    st.save_pretrained(str(out))
    export_dynamic_quantized_onnx_model(st, config, str(out))
    file_name = f"onnx/model_qint8_{config}.onnx"
    if not (out / file_name).is_file():
        raise FileNotFoundError(f"{out / file_name}: the quantized export did not write it")
    return {
        "file_name": file_name,
        "quantization_config": config,
        "seconds": round(time.monotonic() - t0, 1),
        "versions": versions(),
    }


def load_model(model: str, file_name: str):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model, backend="onnx", device="cpu", model_kwargs={"file_name": file_name})
    prompt = (st.prompts or {}).get("passage") or None
    return st, lambda batch: st.encode(batch, batch_size=len(batch), prompt=prompt, normalize_embeddings=True)


def inprocess(args: argparse.Namespace) -> dict:
    """Every level of the in-process peer, with this process's RSS sampled while the load runs."""
    batches = json.loads(Path(args.batches).read_text())
    _, call = load_model(args.model, args.file_name)
    for batch in batches[:5]:  # warm-up
        call(batch)
    res: dict = {"rss_idle_kb": proc_status(os.getpid()).get("VmRSS"), "levels": [], "versions": versions()}
    for c in [int(x) for x in args.levels.split(",")]:
        samples: list[int] = []

        def sampler(samples: list[int] = samples) -> None:
            samples.append(proc_status(os.getpid()).get("VmRSS", 0))

        r = drive(call, batches, c, args.seconds, args.max_requests, sampler)
        r["rss_max_sampled_kb"] = max(samples) if samples else None
        r["vmhwm_kb_after"] = proc_status(os.getpid()).get("VmHWM")
        r["load"] = load()
        res["levels"].append(r)
        print(f"  st-onnx-int8 c={c}: {r['texts_per_s']} texts/s p99 {r['p99_ms']} ms", file=sys.stderr)
    return res


def make_app(model: str, file_name: str):
    """``POST /v1/embeddings`` as a user writes it: a sync endpoint (FastAPI's thread pool) calling encode.

    Annotations stay evaluated (no ``from __future__ import annotations``): FastAPI reads the local model.
    """
    import numpy as np
    from fastapi import FastAPI
    from pydantic import BaseModel

    st, call = load_model(model, file_name)

    class Request(BaseModel):
        input: str | list[str]
        model: str = "st-onnx-int8"
        encoding_format: str = "float"

    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    def embeddings(req: Request) -> dict:
        texts = [req.input] if isinstance(req.input, str) else req.input
        vectors = np.asarray(call(texts), dtype="<f4")
        if req.encoding_format == "base64":
            data = [base64.b64encode(v.tobytes()).decode() for v in vectors]
        else:
            data = vectors.tolist()
        items = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)]
        return {"object": "list", "model": req.model, "data": items}

    return app


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("export")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--config", default="avx2", choices=["arm64", "avx2", "avx512", "avx512_vnni"])
    p = sub.add_parser("inprocess")
    p.add_argument("--model", required=True)
    p.add_argument("--file-name", required=True)
    p.add_argument("--batches", required=True, help="JSON file: a list of lists of texts")
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--max-requests", type=int, default=400)
    p = sub.add_parser("serve")
    p.add_argument("--model", required=True)
    p.add_argument("--file-name", required=True)
    p.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.cmd == "serve":
        import uvicorn

        uvicorn.run(
            make_app(args.model, args.file_name), host="127.0.0.1", port=args.port, log_level="warning"
        )
        return 0
    result = export(args.model, args.out, args.config) if args.cmd == "export" else inprocess(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
