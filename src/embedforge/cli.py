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

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # embedforge never downloads models at run time
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from embedforge import __version__  # noqa: E402
from embedforge.config import STAGE_CONFIGS, ConfigError, describe, load_config  # noqa: E402


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

    sub.add_parser("models", help="list the known model names and where they resolve")

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

    finetune = _stage_parser(sub, "finetune", "contrastive fine-tuning (full or LoRA merged)")
    finetune.add_argument("--train", dest="train_data", help="training data (sets train_data)")
    finetune.add_argument("--val", dest="val_data", help="validation data (sets val_data)")
    finetune.add_argument("--model", dest="base_model", help="base model name or folder (sets base_model)")
    finetune.add_argument("--out", dest="output_dir", help="output folder (sets output_dir)")
    finetune.add_argument(
        "--resume", action="store_true", default=None, help="continue from the last checkpoint"
    )

    evaluate = _stage_parser(sub, "eval", "BEIR retrieval metrics for one or more models, base first")
    evaluate.add_argument("--beir", help="BEIR folder (sets beir)")
    evaluate.add_argument(
        "--model", dest="models", action="append", help="a model; repeat to compare (sets models)"
    )
    evaluate.add_argument("--out", help="report folder (sets out)")
    evaluate.add_argument("--dims", help="Matryoshka dimensions, e.g. 64,128,256 (sets dims)")

    show = sub.add_parser(
        "config", help="print a stage's config keys, defaults and docs (or a resolved recipe)"
    )
    show.add_argument("stage", choices=sorted(STAGE_CONFIGS))
    show.add_argument("--config", metavar="RECIPE")
    show.add_argument("overrides", nargs="*", metavar="key=value")

    sub.add_parser("demo", help="the end-to-end demo on the bundled corpus and model (what `make demo` runs)")
    return parser


def _given(args: argparse.Namespace, names: list[str]) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        return _dispatch(args)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "models":
        from embedforge.registry import describe_known_models

        for row in describe_known_models():
            print(f"{row['name']:<10} {row['path']}\n{'':<10} {row['description']}")
        return 0
    if args.command == "data":
        from embedforge import formats

        if args.data_command == "validate":
            summary = formats.validate(args.path)
            print(json.dumps({"path": args.path, "valid": True, **summary}, indent=2))
        else:
            summary = formats.convert(args.src, args.dst, args.to)
            print(json.dumps({"src": args.src, "dst": args.dst, **summary}, indent=2))
        return 0
    if args.command == "config":
        from embedforge.config import config_dict

        if args.config or args.overrides:
            print(json.dumps(config_dict(load_config(args.stage, args.config, args.overrides)), indent=2))
        else:
            print(_keys_epilog(args.stage))
        return 0
    if args.command == "finetune":
        from embedforge.train import finetune

        given = _given(args, ["train_data", "val_data", "base_model", "output_dir", "resume"])
        config = load_config("finetune", args.config, args.overrides, **given)
        if not config.train_data:
            raise ConfigError("finetune needs training data: --train PATH or train_data=PATH")
        summary = finetune(config)
        print(
            json.dumps({k: summary[k] for k in ("steps", "train_loss", "best_metric", "seconds")}, indent=2)
        )
        print(f"model saved to {config.output_dir}/model")
        return 0
    if args.command == "eval":
        from embedforge.evaluate import run_eval

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
    if args.command == "demo":
        from embedforge.demo import main as demo_main

        return demo_main()
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
