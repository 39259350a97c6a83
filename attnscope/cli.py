"""The ``attnscope`` command line: parses, calls the library, prints.

It holds no logic the library lacks. Library errors (AttnscopeError) are printed
as one line without a traceback, and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from collections.abc import Sequence

from attnscope._version import __version__
from attnscope.errors import AttnscopeError, ConfigError

EXIT_ERROR = 1
EXIT_USAGE = 2
DEMO_QUERIES = 6


def _cmd_layers(args: argparse.Namespace) -> int:
    from attnscope.layers.registry import attn_options, describe_attn, list_attn

    names = list_attn()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {describe_attn(name)}")
        if args.options:
            print(f"{'':<{width}}  options: {', '.join(attn_options(name))}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from attnscope.models import list_models, model_summary

    rows = [model_summary(name, num_classes=args.num_classes) for name in list_models()]
    print(f"{'model':<18} {'params':>8} {'input':>11} {'taps':>4}  {'weights':<20} paper")
    for row in rows:
        size = "x".join(str(n) for n in row["input_size"])
        print(
            f"{row['model']:<18} {row['params'] / 1e6:>7.2f}M {size:>11} {row['attention_taps']:>4}  "
            f"{row['pretrained']:<20} {row['paper']}"
        )
    print(f"(parameters with a {args.num_classes}-class head)")
    return 0


def _train_settings(args: argparse.Namespace) -> list[str]:
    """--set values, then each explicit flag as a dotted setting: flags override the file."""
    settings = list(args.set or [])
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            settings.append(f"{key}={value}")
    for option in args.model_option or []:
        settings.append(f"model.options.{option}")
    for option in args.data_option or []:
        settings.append(f"data.source_options.{option}")
    if args.skip_bad:
        settings.append("data.skip_bad=true")
    if args.no_progress:
        settings += ["trainer.progress=false", "data.progress=false"]
    return settings


TRAIN_FLAGS = {
    "model": "model.name",
    "data": "data.source",
    "image_size": "data.image_size",
    "batch_size": "data.batch_size",
    "cache_dir": "data.cache_dir",
    "epochs": "trainer.epochs",
    "lr": "optim.lr",
    "optimizer": "optim.name",
    "schedule": "schedule.name",
    "loss": "loss.name",
    "precision": "trainer.precision",
    "accelerator": "trainer.accelerator",
    "devices": "trainer.devices",
    "num_nodes": "trainer.num_nodes",
    "strategy": "trainer.strategy",
    "seed": "trainer.seed",
    "run_dir": "run_dir",
}


def _print_best(result) -> None:
    best = result.best
    if best:
        metrics = best.get("metrics", {})
        shown = "  ".join(
            f"{k} {metrics[k]:.4f}"
            for k in ("val/auc", "val/accuracy", "val/sensitivity_youden", "val/specificity_youden")
            if k in metrics
        )
        print(f"best epoch {best['epoch'] + 1} ({best['monitor']}): {shown}")
    print(f"run directory: {result.run_dir}")


def _cmd_train(args: argparse.Namespace) -> int:
    from attnscope.engine.config import load_config
    from attnscope.engine.train import resume_config, train

    _quiet_lightning(args.verbose)

    if args.resume:
        if args.config or _train_settings(args):
            raise ConfigError(
                "--resume continues a run exactly as configured; drop the other options "
                f"(its config is {args.resume}/config.yaml)"
            )
        result = train(resume_config(args.resume), resume=True)
    else:
        result = train(load_config(args.config, _train_settings(args)))
    if result.is_global_zero:
        _print_best(result)
    return 0


def _print_metrics(result: dict) -> None:
    metrics = result["metrics"]
    names = (
        "auc",
        "ap",
        "accuracy",
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "sensitivity_youden",
        "specificity_youden",
    )
    print(f"{result['data']} ({metrics['rows']} images, {result['kind']}):")
    for name in names:
        if name in metrics:
            print(f"  {name:<20} {metrics[name]:.4f}")
    if isinstance(metrics.get("threshold"), float):
        print(f"  {'threshold (val)':<20} {metrics['threshold']:.4f}")
    print(f"metrics and plots: {result['out']}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from attnscope.engine.inference import evaluate, evaluation_rows, load_run

    options = _data_options(args)
    run = load_run(args.run, args.weights)
    loader = evaluation_rows(run, args.data, options, args.split, not args.no_progress, args.skip_bad)
    result = evaluate(
        args.run,
        args.out,
        args.data,
        options,
        args.split,
        args.weights,
        progress=not args.no_progress,
        skip_bad=args.skip_bad,
        run=run,
        loader=loader,
    )
    _print_metrics(result)
    if not args.no_report and args.data is None and args.split == "test":
        from attnscope.explain.report import write_report

        report = write_report(
            args.run, weights=args.weights, progress=not args.no_progress, evaluation=result, run=run, loader=loader
        )
        print(f"report: {report}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from attnscope.explain.report import write_report

    report = write_report(
        args.run, args.out, args.per_group, args.score_images, args.steps, args.weights, progress=not args.no_progress
    )
    print(f"report: {report}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from attnscope.engine.inference import images_from_csv, predict

    images = list(args.images)
    if args.csv:
        images += images_from_csv(args.csv, args.column, args.image_root)
    out = args.out or f"{args.run}/predictions.csv"
    result = predict(args.run, images, out, args.weights, args.skip_bad, progress=not args.no_progress)
    print(f"{result['rows']} predictions: {result['out']}")
    if result["skipped"]:
        print(f"{result['skipped']} image(s) left out (--skip-bad): {result['bad_rows']}")
    return 0


def _print_scores(summary: dict) -> None:
    names = ("pointing_game", "energy", "jaccard", "deletion_auc", "insertion_auc")
    shown = [n for n in names if any(n in entry for entry in summary.values())]
    width = max([len(m) for m in summary] + [6])
    print(f"{'method':<{width}}  " + "  ".join(f"{n:>13}" for n in shown))
    for method, entry in summary.items():
        print(f"{method:<{width}}  " + "  ".join(f"{entry[n]:>13.3f}" if n in entry else f"{'':>13}" for n in shown))


def _cmd_explain(args: argparse.Namespace) -> int:
    from attnscope.explain.explainer import explain_run

    options = _data_options(args)
    out = args.out or f"{args.run}/explain"
    result = explain_run(
        args.run,
        out,
        args.images,
        args.method or ["all"],
        args.data,
        options,
        args.split,
        args.count,
        args.weights,
        args.steps,
        args.layer,
        args.skip_bad,
        progress=not args.no_progress,
        alpha=args.alpha,
        cmap=args.cmap,
    )
    print(f"{result['images']} image(s), methods: {', '.join(result['methods'])}")
    _print_scores(result["summary"])
    masks = "" if result["has_masks"] else " (no masks: faithfulness only)"
    print(f"overlays, raw maps and scores.csv{masks}: {result['out']}")
    return 0


def _data_options(args: argparse.Namespace) -> dict | None:
    """--data-option KEY=VALUE pairs as source options (they need --data)."""
    from attnscope.engine.config import apply_settings

    options = apply_settings({}, args.data_option or []) if args.data_option else None
    if options and not args.data:
        raise ConfigError("--data-option needs --data SOURCE")
    return options


def _cmd_index(args: argparse.Namespace) -> int:
    from attnscope.engine.config import apply_settings
    from attnscope.retrieval import EmbeddingConfig, build_index

    params = apply_settings({}, args.param) if args.param else None
    embedding = None
    if not (args.add and args.stages is None and not args.attention_pooling and args.pca is None and not args.fp16):
        embedding = EmbeddingConfig(
            stages=tuple(args.stages.split(",")) if args.stages else (),
            attention_pooling=args.attention_pooling,
            taps=tuple(args.taps.split(",")) if args.taps else (),
            pca_dim=args.pca or 0,
            dtype="float16" if args.fp16 else "float32",
        )
    result = build_index(
        args.run,
        args.out,
        args.data,
        _data_options(args),
        args.split,
        args.kind,
        params,
        embedding,
        fp16=args.fp16,
        with_thumbnails=not args.no_thumbnails,
        add=args.add,
        weights=args.weights,
        skip_bad=args.skip_bad,
        progress=not args.no_progress,
    )
    verb = "added" if args.add else "indexed"
    params = "".join(f", {name}={value}" for name, value in result["params"].items())
    print(
        f"{verb} {result['added']} images: {result['count']} in {result['out']} "
        f"({result['kind']}{params}, {result['dim']}-d vectors)"
    )
    if result["skipped"]:
        print(f"{result['skipped']} image(s) left out (--skip-bad)")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from attnscope.retrieval import result_rows, search_images, write_results_csv
    from attnscope.retrieval.page import write_search_page

    index, result = search_images(
        args.index, args.images, args.k, args.run, args.skip_bad, progress=not args.no_progress
    )
    lines = result_rows(index, result)
    for query in result.queries:
        print(f"{query['id']}:")
        for line in (line for line in lines if line["query"] == query["id"]):
            print(f"  {line['rank']:>3}  {line['similarity']:.4f}  {line['label']:<16} {line['id']}")
    if args.out:
        print(f"neighbours: {write_results_csv(lines, args.out)}")
    if args.html:
        print(f"page: {write_search_page(index, result, args.html, args.index)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from attnscope.engine.config import load_config
    from attnscope.data.loader import BatchLoader
    from attnscope.engine.inference import evaluate as evaluate_run
    from attnscope.engine.inference import load_run, split_loaders
    from attnscope.retrieval import EmbeddingConfig, build_index
    from attnscope.retrieval.page import write_search_page
    from attnscope.retrieval.service import open_index, search_loader
    from attnscope.engine.train import train
    from attnscope.explain.overlay import write_run_attention_grid
    from attnscope.explain.report import write_report

    _quiet_lightning(args.verbose)

    started = time.perf_counter()
    settings = [f"run_dir={args.out}"] + (["trainer.progress=false", "data.progress=false"] if args.no_progress else [])
    if args.epochs:
        settings.append(f"trainer.epochs={args.epochs}")
    config = load_config("demo", settings)
    run_dir = Path(config.run_dir)
    if run_dir.exists() and (run_dir / "config.yaml").exists():
        shutil.rmtree(run_dir)  # the demo's folder is the demo's own: start it afresh
    print(
        f"attnscope demo: {config.model.name} on {config.data.source} "
        f"({config.data.source_options.get('count')} images, {config.data.image_size} px), "
        f"{config.trainer.epochs} epochs"
    )
    result = train(config)
    _print_best(result)
    run = load_run(run_dir)
    loaders = split_loaders(run, ["test", "train"], progress=not args.no_progress)  # read once for all below
    loader = loaders["test"]
    evaluation = evaluate_run(run_dir, progress=not args.no_progress, run=run, loader=loader)
    _print_metrics(evaluation)
    grid = write_run_attention_grid(run, loader, 8, run_dir / "attention.png")
    print(f"attention overlays (input | pool3 | pool4): {grid}")
    report = write_report(run_dir, progress=not args.no_progress, evaluation=evaluation, run=run, loader=loader)
    print(f"report (metrics, curves, attention vs Grad-CAM scores, gallery): {report}")
    index_dir = run_dir / "index"
    indexed = build_index(
        run_dir,
        index_dir,
        embedding=EmbeddingConfig(attention_pooling=True),
        progress=not args.no_progress,
        run=run,
        loader=loaders["train"],
    )
    index, _ = open_index(index_dir, run=run)
    queries = BatchLoader(loader.decoded, loader.order()[:DEMO_QUERIES], DEMO_QUERIES)
    similar = search_loader(index, run, queries, k=8, progress=not args.no_progress, with_labels=True)
    page = write_search_page(index, similar, run_dir / "similar.html", index_dir)
    print(
        f"similarity index of the {indexed['count']} training images (attention-pooled): {index_dir}; "
        f"{DEMO_QUERIES} test images and their most similar training images: {page}"
    )
    print(f"demo finished in {time.perf_counter() - started:.0f} s; everything is in {run_dir}")
    return 0


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out unreadable or invalid rows (listed in bad_rows.csv) instead of stopping",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnscope",
        description="Build, train, evaluate and explain attention-augmented image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"attnscope {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    layers = verbs.add_parser("layers", help="list the attention layers create_attn knows")
    layers.add_argument("--options", action="store_true", help="also list each layer's options")
    layers.set_defaults(handler=_cmd_layers)

    models = verbs.add_parser("models", help="list the models create_model knows, with sizes")
    models.add_argument("--num-classes", type=int, default=2, help="classifier width to count (default: 2)")
    models.set_defaults(handler=_cmd_models)

    train = verbs.add_parser(
        "train",
        help="train a model into a run directory",
        description="Options come from --config (a YAML file or a shipped name: "
        "demo), then --set, then the flags; later ones win.",
    )
    train.add_argument("--config", help="YAML run config, or the name of a shipped one")
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any config value by its dotted key, e.g. --set optim.lr=0.01 (repeatable)",
    )
    train.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its last finished epoch")
    train.add_argument("--model", help="registered model name (attnscope models)")
    train.add_argument("--model-option", action="append", metavar="KEY=VALUE", help="model builder option")
    train.add_argument(
        "--data", metavar="SOURCE", help="data source: csv, folder, idx, medmnist, synthetic_lesions, cluttered"
    )
    train.add_argument(
        "--data-option",
        action="append",
        metavar="KEY=VALUE",
        help="source option, e.g. --data-option csv_path=train.csv (repeatable)",
    )
    train.add_argument("--image-size", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--cache-dir")
    train.add_argument("--epochs", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    train.add_argument("--schedule", choices=["none", "step", "cosine", "onecycle"])
    train.add_argument("--loss", choices=["focal", "ce"])
    train.add_argument("--precision", help="32-true, bf16-mixed, 16-mixed, ... (Lightning's names)")
    train.add_argument("--accelerator", help="cpu, gpu, auto")
    train.add_argument("--devices", help="how many devices (or 'auto')")
    train.add_argument("--num-nodes", type=int)
    train.add_argument("--strategy", help="auto, ddp, ... (Lightning's names)")
    train.add_argument("--seed", type=int)
    train.add_argument("--run-dir", help="where the run goes (default runs/<model>-<time>)")
    _add_data_flags(train)
    train.set_defaults(handler=_cmd_train)

    evaluate = verbs.add_parser("evaluate", help="metrics and plots of a run on its test split or other data")
    evaluate.add_argument("run", metavar="RUN")
    evaluate.add_argument("--data", metavar="SOURCE", help="evaluate on every row of this source instead")
    evaluate.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--weights", default="best", help="best, last, or a .safetensors file")
    evaluate.add_argument("--out", help="output folder (default RUN/evaluation)")
    evaluate.add_argument("--no-report", action="store_true", help="do not write RUN/report.html afterwards")
    _add_data_flags(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)

    predict = verbs.add_parser("predict", help="per-class probabilities of images as a CSV")
    predict.add_argument("run", metavar="RUN")
    predict.add_argument("images", nargs="*", metavar="IMAGE")
    predict.add_argument("--csv", help="a CSV listing the images")
    predict.add_argument("--column", default="path", help="the CSV's image column (default: path)")
    predict.add_argument("--image-root", help="folder the CSV's names are relative to (default: the CSV's)")
    predict.add_argument("--weights", default="best")
    predict.add_argument("--out", help="output CSV (default RUN/predictions.csv)")
    _add_data_flags(predict)
    predict.set_defaults(handler=_cmd_predict)

    explain = verbs.add_parser("explain", help="attention maps and CAMs of a run, drawn and scored")
    explain.add_argument("run", metavar="RUN")
    explain.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders (default: the split)")
    explain.add_argument(
        "--method",
        action="append",
        help="attention, gradcam, gradcam++, xgradcam, layercam or all (default; repeatable)",
    )
    explain.add_argument("--data", metavar="SOURCE", help="explain images of this source (with masks: scored)")
    explain.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    explain.add_argument("--split", default="test", choices=["train", "val", "test"])
    explain.add_argument("--count", type=int, default=16, help="images to explain (0: all; default 16)")
    explain.add_argument("--layer", action="append", help="CAM target layer (default: the model's; repeatable)")
    explain.add_argument("--steps", type=int, default=16, help="steps of the deletion/insertion curves")
    explain.add_argument("--alpha", type=float, default=0.4, help="heat map weight over the image (seed: 0.4)")
    explain.add_argument("--cmap", default="jet", help="matplotlib colour map of the overlays (default jet)")
    explain.add_argument("--weights", default="best")
    explain.add_argument("--out", help="output folder (default RUN/explain)")
    _add_data_flags(explain)
    explain.set_defaults(handler=_cmd_explain)

    report = verbs.add_parser("report", help="one self-contained HTML page about a run")
    report.add_argument("run", metavar="RUN")
    report.add_argument("--out", help="output file (default RUN/report.html)")
    report.add_argument("--per-group", type=int, default=4, help="gallery images per outcome group (default 4)")
    report.add_argument("--score-images", type=int, default=32, help="test images scored (default 32)")
    report.add_argument("--steps", type=int, default=8, help="steps of the deletion/insertion curves")
    report.add_argument("--weights", default="best")
    report.add_argument("--no-progress", action="store_true")
    report.set_defaults(handler=_cmd_report)

    index = verbs.add_parser(
        "index",
        help="embed a run's images into a similarity index (FAISS)",
        description="Embeds the run's training split (or --split, or every row of --data) "
        "with the run's model and saves a searchable index folder.",
    )
    index.add_argument("run", metavar="RUN")
    index.add_argument("--out", required=True, metavar="INDEX", help="index folder (replaced whole when written)")
    index.add_argument("--data", metavar="SOURCE", help="index every row of this source instead of a split")
    index.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    index.add_argument(
        "--split",
        default="train",
        choices=["train", "val", "test"],
        help="the run's split to index (default train: the images already diagnosed)",
    )
    index.add_argument(
        "--kind",
        default="flat",
        choices=["flat", "ivf", "hnsw", "lsh"],
        help="flat: exact; ivf, hnsw: approximate, for large galleries; lsh: hashing",
    )
    index.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="index parameter: ivf nlist, nprobe; hnsw M, ef_search, ef_construction; lsh nbits, rerank (repeatable)",
    )
    index.add_argument(
        "--stages",
        help="comma-separated modules whose feature maps are pooled "
        "(default: the model's last feature map, e.g. layer3,layer4 for a ResNet)",
    )
    index.add_argument(
        "--attention-pooling", action="store_true", help="also pool each stage under the model's own attention maps"
    )
    index.add_argument("--taps", help="comma-separated attention taps to pool with (default: every spatial one)")
    index.add_argument("--pca", type=int, metavar="DIM", help="reduce embeddings to DIM with PCA fitted on the gallery")
    index.add_argument("--fp16", action="store_true", help="store vectors and the index in float16 (half the memory)")
    index.add_argument("--no-thumbnails", action="store_true", help="keep no thumbnails (search --html shows none)")
    index.add_argument("--add", action="store_true", help="add these images to the index at --out")
    index.add_argument("--weights", default="best")
    _add_data_flags(index)
    index.set_defaults(handler=_cmd_index)

    search = verbs.add_parser("search", help="the most similar indexed images of query images")
    search.add_argument("index", metavar="INDEX")
    search.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    search.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    search.add_argument("--out", help="also write the neighbours as a CSV")
    search.add_argument("--html", metavar="PAGE", help="write a page with each query and its neighbours")
    search.add_argument("--run", help="the run the index was built from, if it moved")
    _add_data_flags(search)
    search.set_defaults(handler=_cmd_search)

    demo = verbs.add_parser("demo", help="train, evaluate and draw attention on built-in synthetic lesions")
    demo.add_argument("--out", default="runs/demo", help="run directory (default runs/demo, replaced)")
    demo.add_argument("--epochs", type=int, help="override the demo's epochs")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    if args.verb is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.handler(args)
    except AttnscopeError as error:
        if args.debug:
            raise
        print(f"attnscope: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("attnscope: interrupted", file=sys.stderr)
        return 130


class _TqdmHandler(logging.StreamHandler):
    """Log lines written through tqdm, so they do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _configure_logging(verbose: int) -> None:
    """attnscope's INFO lines (the per-epoch summary) are shown; other libraries' only when -v."""
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING - 10 * min(verbose, 2))
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"))
    logging.getLogger("attnscope").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


def _quiet_lightning(verbose: int) -> None:
    """Lightning announces devices and tips at INFO through its own handler, set on import: keep
    that for -v. Call after the engine (and so Lightning) is imported."""
    if verbose:
        return
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
