"""The `embedforge` command: one sub-command per stage, each runnable alone on its own inputs.

Stage options come from the stage's typed config (``embedforge.config``): a recipe section (``--config``),
the common flags below, and ``key=value`` overrides; ``--help`` lists every key with its default.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # embedforge never downloads models at run time
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embedforge import __version__  # noqa: E402
from embedforge.config import STAGE_CONFIGS, ConfigError, describe, load_config  # noqa: E402
from embedforge.errors import EmbedforgeError  # noqa: E402


def _keys_epilog(stage: str) -> str:
    rows = describe(STAGE_CONFIGS[stage])
    width = max(len(k) for k, _, _ in rows)
    lines = [f"config keys (recipe section '{stage}:' or key=value overrides):"]
    lines += [f"  {key:<{width}}  {help_} (default {default})" for key, default, help_ in rows]
    return "\n".join(lines)


def _stage_parser(sub, stage: str, help_: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        stage,
        help=help_,
        description=help_,
        epilog=_keys_epilog(stage),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--config", metavar="RECIPE", help=f"recipe YAML; its '{stage}:' section is read")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedforge",
        description="Customize a text-embedding model for your documents: fine-tune, evaluate, serve.",
    )
    parser.add_argument("--version", action="version", version=f"embedforge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_models_parser,
        _add_data_parser,
        _add_finetune_parser,
        _add_eval_parser,
        _add_config_parser,
        _add_prep_parser,
        _add_export_parser,
        _add_serve_parser,
        _add_verify_parser,
        _add_run_parser,
        _add_sdg_parser,
        _add_demo_parser,
        _add_platform_parser,
    ):
        add(sub)
    return parser


def _add_models_parser(sub) -> None:
    """``embedforge models``."""
    sub.add_parser("models", help="list the known model names and where they resolve")


def _add_data_parser(sub) -> None:
    """``embedforge data validate|convert``."""
    data = sub.add_parser("data", help="validate or convert training and evaluation data")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    validate = data_sub.add_parser(
        "validate", help="check a data file/folder; errors name file, line and field"
    )
    validate.add_argument("path")
    convert = data_sub.add_parser("convert", help="convert between formats (written atomically)")
    convert.add_argument("src")
    convert.add_argument("dst")
    convert.add_argument("--to", required=True, choices=["inline", "corpus_id", "beir", "triplets"])


def _add_finetune_parser(sub) -> None:
    """``embedforge finetune`` and its shorthand flags."""
    finetune = _stage_parser(sub, "finetune", "contrastive fine-tuning (full or LoRA merged)")
    finetune.add_argument("--train", dest="train_data", help="training data (sets train_data)")
    finetune.add_argument("--val", dest="val_data", help="validation data (sets val_data)")
    finetune.add_argument("--model", dest="base_model", help="base model name or folder (sets base_model)")
    finetune.add_argument("--out", dest="output_dir", help="output folder (sets output_dir)")
    finetune.add_argument(
        "--resume", action="store_true", default=None, help="continue from the last checkpoint"
    )


def _add_eval_parser(sub) -> None:
    """``embedforge eval`` and its shorthand flags."""
    evaluate = _stage_parser(sub, "eval", "BEIR retrieval metrics for one or more models, base first")
    evaluate.add_argument("--beir", help="BEIR folder (sets beir)")
    evaluate.add_argument(
        "--model", dest="models", action="append", help="a model; repeat to compare (sets models)"
    )
    evaluate.add_argument("--out", help="report folder (sets out)")
    evaluate.add_argument("--dims", help="Matryoshka dimensions, e.g. 64,128,256 (sets dims)")


def _add_config_parser(sub) -> None:
    """``embedforge config``: a stage's keys, or a resolved recipe."""
    show = sub.add_parser(
        "config", help="print a stage's config keys, defaults and docs (or a resolved recipe)"
    )
    show.add_argument("stage", choices=sorted(STAGE_CONFIGS))
    show.add_argument("--config", metavar="RECIPE")
    show.add_argument("overrides", nargs="*", metavar="key=value")


def _add_prep_parser(sub) -> None:
    """``embedforge prep`` and its shorthand flags."""
    prep = _stage_parser(
        sub, "prep", "document split, leak-free hard-negative mining, training data and a BEIR test set"
    )
    prep.add_argument("--pairs", help="question pairs JSONL from sdg (sets pairs)")
    prep.add_argument("--passages", help="passages JSONL from sdg (sets passages)")
    prep.add_argument("--out", help="output folder (sets out)")
    prep.add_argument("--model", help="model that mines the negatives (sets model)")


def _add_export_parser(sub) -> None:
    """``embedforge export MODEL OUT_DIR`` and its shorthand flags."""
    export = _stage_parser(
        sub, "export", "ONNX export: pooling, Matryoshka truncation and L2 norm in the graph, parity-checked"
    )
    export.usage = (
        "%(prog)s MODEL OUT_DIR [key=value ...] [--quantize int8] [--fp16] [--beir DIR] [--config RECIPE]"
    )
    export.add_argument("model", nargs="?", metavar="MODEL", help="known model name or folder (sets model)")
    export.add_argument("out", nargs="?", metavar="OUT_DIR", help="export folder (sets out)")
    export.add_argument("--quantize", choices=["int8"], help="also write model_int8.onnx (sets quantize)")
    export.add_argument(
        "--fp16", action="store_true", default=None, help="also write model_fp16.onnx (sets fp16)"
    )
    export.add_argument("--beir", help="BEIR folder for the int8/fp16 nDCG@10 delta (sets beir)")


def _add_serve_parser(sub) -> None:
    """``embedforge serve [MODEL_DIR]`` and its shorthand flags."""
    serve = _stage_parser(sub, "serve", "OpenAI/NIM-compatible /v1/embeddings server with dynamic batching")
    serve.add_argument(
        "model",
        nargs="?",
        metavar="MODEL_DIR",
        help="checkpoint folder, known name or ONNX export (sets model)",
    )
    serve.add_argument("--host", help="interface to listen on (sets host)")
    serve.add_argument("--port", type=int, help="TCP port (sets port)")
    serve.add_argument(
        "--precision", choices=["fp32", "int8", "fp16"], help="ONNX export graph to run (sets precision)"
    )


def _add_verify_parser(sub) -> None:
    """``embedforge verify`` and its shorthand flags."""
    verify = _stage_parser(
        sub, "verify", "check a served model against its offline eval (NVIDIA's tolerances)"
    )
    verify.add_argument("--url", help="server base URL (sets url)")
    verify.add_argument("--beir", help="BEIR folder the reference was evaluated on (sets beir)")
    verify.add_argument("--reference", help="eval_results.json from `embedforge eval` (sets reference)")
    verify.add_argument("--reference-model", help="model entry of the reference; default the last")
    verify.add_argument("--model", help="model name to request; default the server's first (sets model)")
    verify.add_argument("--dimensions", type=int, help="request this Matryoshka size (sets dimensions)")
    verify.add_argument("--out", help="write the JSON report here (sets out)")


def _add_run_parser(sub) -> None:
    """``embedforge run``: the whole pipeline into one run folder."""
    run = sub.add_parser(
        "run",
        help="the whole pipeline on a folder of documents: sdg -> prep -> finetune -> eval [-> export -> verify]",
        description="Run the stages in order into one run folder; unchanged stages are skipped on re-run.",
    )
    run.add_argument("--corpus", required=True, help="folder of .txt/.md/.rst/.html documents")
    run.add_argument("--out", required=True, help="run folder")
    run.add_argument("--config", metavar="RECIPE", help="recipe YAML with a section per stage")
    run.add_argument(
        "--stages",
        default="sdg,prep,finetune,eval",
        help="comma-separated subset of sdg,prep,finetune,eval,export,verify",
    )
    run.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="generate and embed on a Ray cluster: host:port of its head, ray://host:10001, or auto "
        "(overrides the recipe's ray key; needs pip install 'embedforge[ray]')",
    )
    run.add_argument("overrides", nargs="*", metavar="stage.key=value", help="override a stage's config key")


def _add_sdg_parser(sub) -> None:
    """``embedforge sdg`` and its shorthand flags."""
    sdg = _stage_parser(sub, "sdg", "an LLM writes questions the passages answer; filtered, resumable")
    sdg.add_argument("--corpus", metavar="DIR", help="folder of documents (sets corpus)")
    sdg.add_argument("--out", metavar="DIR", help="output folder (sets out)")
    sdg.add_argument("--backend", choices=["local", "openai"], help="generator backend (sets backend)")


def _add_demo_parser(sub) -> None:
    """``embedforge demo``."""
    sub.add_parser("demo", help="the end-to-end demo on the bundled corpus and model (what `make demo` runs)")


def _add_platform_parser(sub) -> None:
    """``embedforge platform serve`` and its flags."""
    platform = sub.add_parser("platform", help="NVIDIA's NeMo Microservices embedding workflow over HTTP")
    platform_sub = platform.add_subparsers(dest="platform_command", metavar="ACTION", required=True)
    pserve = platform_sub.add_parser(
        "serve", help="data store, entity store, customizer, deployments, evaluator"
    )
    pserve.add_argument("--data-dir", help="where files and the SQLite database live (EMBEDFORGE_DATA_DIR)")
    pserve.add_argument("--host", default="127.0.0.1")
    pserve.add_argument("--port", type=int, default=8080)
    pserve.add_argument(
        "--nim-port", type=int, help="also answer /v1/embeddings and /v1/models here (EMBEDFORGE_NIM_PORT)"
    )
    pserve.add_argument("--database-url", help="e.g. postgresql://user@host/db (EMBEDFORGE_DATABASE_URL)")
    pserve.add_argument(
        "--base-model", action="append", metavar="DIR", help="also offer this model folder as a target"
    )
    pserve.add_argument(
        "--allow-path",
        action="append",
        metavar="DIR",
        help="model folders (target model_path, file:// artifacts) may also be under DIR "
        "(EMBEDFORGE_ALLOW_PATHS, os.pathsep-separated); by default only the data dir",
    )
    pserve.add_argument(
        "--executor",
        choices=["local", "ray"],
        help="where jobs run: child processes of the platform (local, the default) or a Ray cluster "
        "(EMBEDFORGE_EXECUTOR)",
    )
    pserve.add_argument(
        "--ray-address", help="the Ray cluster's dashboard, e.g. http://HOST:8265 (EMBEDFORGE_RAY_ADDRESS)"
    )
    pserve.add_argument(
        "--public-url",
        help="how job workers reach this platform's data store, e.g. http://platform.example:8080 "
        "(EMBEDFORGE_PUBLIC_URL); default http://HOST:PORT",
    )


def _given(args: argparse.Namespace, names: list[str]) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    try:
        return _dispatch(args)
    except (EmbedforgeError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _models(args: argparse.Namespace) -> int:
    from embedforge.models.registry import describe_known_models

    for row in describe_known_models():
        print(f"{row['name']:<20} {row['kind']:<10} {row['path']}\n{'':<31} {row['description']}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from embedforge.data import formats

    if args.data_command == "validate":
        summary = formats.validate(args.path)
        print(json.dumps({"path": args.path, "valid": True, **summary}, indent=2))
    else:
        summary = formats.convert(args.src, args.dst, args.to)
        print(json.dumps({"src": args.src, "dst": args.dst, **summary}, indent=2))
    return 0


def _config(args: argparse.Namespace) -> int:
    from embedforge.config import config_dict

    if args.config or args.overrides:
        print(json.dumps(config_dict(load_config(args.stage, args.config, args.overrides)), indent=2))
    else:
        print(_keys_epilog(args.stage))
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from embedforge.finetune.trainer import finetune

    given = _given(args, ["train_data", "val_data", "base_model", "output_dir", "resume"])
    config = load_config("finetune", args.config, args.overrides, **given)
    if not config.train_data:
        raise ConfigError("finetune needs training data: --train PATH or train_data=PATH")
    summary = finetune(config)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns; one prints
        print(
            json.dumps({k: summary[k] for k in ("steps", "train_loss", "best_metric", "seconds")}, indent=2)
        )
        print(f"model saved to {config.output_dir}/model")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from embedforge.evaluate.retrieval import run_eval

    given = _given(args, ["beir", "models", "out"])
    if args.dims:
        given["dims"] = [int(d) for d in args.dims.split(",") if d.strip()]
    config = load_config("eval", args.config, args.overrides, **given)
    if not config.beir:
        raise ConfigError("eval needs a BEIR folder: --beir DIR")
    results = run_eval(config)
    print(results["table"])
    print(f"report written to {config.out}")
    return 0


def _prep(args: argparse.Namespace) -> int:
    from embedforge.prep.run import run_prep

    config = load_config(
        "prep", args.config, args.overrides, **_given(args, ["pairs", "passages", "out", "model"])
    )
    if not config.pairs:
        raise ConfigError("prep needs the pairs written by sdg: --pairs PATH or pairs=PATH")
    report = run_prep(config)
    split, mining = report["split"], report["mining"]
    summary = {
        "questions": split["questions"],
        "train_records": split["train_records"],
        "skipped_by_margin": mining["skipped_by_margin"],
        "rows_short_of_negatives": mining["rows_short"],
        "outputs": report["outputs"],
    }
    print(json.dumps(summary, indent=2))
    return 0


def _split_positionals(args: argparse.Namespace, names: list[str], takes: str) -> tuple[dict, list[str]]:
    """argparse gives leading positionals to ``overrides`` first: split the words back by the "=" in key=value.

    Returns the positionals by name and the ``key=value`` overrides.
    """
    words = [*args.overrides, *(getattr(args, n) for n in names if getattr(args, n) is not None)]
    positional = [w for w in words if "=" not in w]
    if len(positional) > len(names):
        raise ConfigError(f"{takes}, got {positional}")
    return dict(zip(names, positional, strict=False)), [w for w in words if "=" in w]


def _export(args: argparse.Namespace) -> int:
    from embedforge.export import ExportError, format_summary, run_export

    given, overrides = _split_positionals(args, ["model", "out"], "export takes MODEL and OUT_DIR")
    given.update(_given(args, ["quantize", "fp16", "beir"]))
    config = load_config("export", args.config, overrides, **given)
    try:
        report = run_export(config)
    except ExportError as err:
        if not err.report:  # nothing was measured (e.g. OUT is not an export folder): one line, exit 2
            raise
        print(format_summary(err.report))
        print(f"export failed, nothing written to {config.out}: {err}", file=sys.stderr)
        return 1
    print(format_summary(report))
    print(f"export written to {config.out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from embedforge.serve.server import run_serve

    given, overrides = _split_positionals(args, ["model"], "serve takes one MODEL_DIR")
    given.update(_given(args, ["host", "port", "precision"]))
    run_serve(load_config("serve", args.config, overrides, **given))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from embedforge.verify import run_verify

    given = _given(args, ["url", "beir", "reference", "reference_model", "model", "dimensions", "out"])
    config = load_config("verify", args.config, args.overrides, **given)
    report = run_verify(config)
    print(report["table"])
    if config.out:
        print(f"report written to {config.out}")
    return 0 if report["passed"] else 1


def _run(args: argparse.Namespace) -> int:
    from embedforge.pipeline.run import run_pipeline

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    summary = run_pipeline(args.corpus, args.out, args.config, args.overrides, stages, ray=args.ray)
    eval_md = Path(args.out) / "eval" / "eval_report.md"
    if eval_md.exists():
        print(eval_md.read_text())
    advice = summary.get("recommendation")
    if advice:
        print(f"recommended model: {advice['model']}" + "".join(f"\n  - {r}" for r in advice["reasons"]))
    print(f"run report: {summary['report']}")
    return 0


def _sdg(args: argparse.Namespace) -> int:
    from embedforge.sdg import GeneratorError, SdgError, run_sdg

    config = load_config("sdg", args.config, args.overrides, **_given(args, ["corpus", "out", "backend"]))
    if not config.corpus:
        raise ConfigError("sdg needs a corpus folder: --corpus DIR or corpus=DIR")
    try:
        report = run_sdg(config)
    except (SdgError, GeneratorError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    keys = ("generator", "passages_selected", "passages_done", "generated", "removed", "kept")
    print(json.dumps({**{k: report[k] for k in keys}, "this_run": report["this_run"]}, indent=2))
    print(f"pairs written to {config.out}/pairs.jsonl; report in {config.out}/sdg_report.json")
    return 0


def _platform(args: argparse.Namespace) -> int:
    from embedforge.platform.server import serve as serve_platform

    serve_platform(
        args.data_dir,
        args.host,
        args.port,
        args.database_url,
        args.base_model,
        args.nim_port,
        args.allow_path,
        args.executor,
        args.ray_address,
        args.public_url,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from embedforge.demo.run import main as demo_main

    return demo_main()


# sub-command -> the function that runs it; each imports its stage only when called, so --help stays fast
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "models": _models,
    "data": _data,
    "config": _config,
    "finetune": _finetune,
    "eval": _eval,
    "prep": _prep,
    "export": _export,
    "serve": _serve,
    "verify": _verify,
    "run": _run,
    "sdg": _sdg,
    "platform": _platform,
    "demo": _demo,
}


def _dispatch(args: argparse.Namespace) -> int:
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
