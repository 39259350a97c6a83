"""The ``attnscope`` command line: parses, calls the library, prints.

Each verb is a parser function (``_parser_<verb>``) and a handler (``_cmd_<verb>``)
that turns the flags into one library call and prints its result. Flags that
several verbs share are defined once (``_add_*``); every list of choices comes
from :mod:`attnscope.names`, which imports nothing heavy, so ``--help`` answers
at once. Library errors (AttnscopeError) are printed as one line without a
traceback, and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnscope import names
from attnscope._version import __version__
from attnscope.errors import AttnscopeError, ConfigError

if TYPE_CHECKING:
    from attnscope.engine.inference import Evaluation
    from attnscope.engine.run import Run
    from attnscope.training.train import TrainResult

EXIT_ERROR = 1
EXIT_USAGE = 2

# --- shared flags -------------------------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser, skip_bad: bool = True) -> None:
    if skip_bad:
        parser.add_argument(
            "--skip-bad",
            action="store_true",
            help="leave out unreadable or invalid rows (listed in bad_rows.csv) instead of stopping",
        )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_run(parser: argparse.ArgumentParser, weights: bool = True) -> None:
    parser.add_argument("run", metavar="RUN", help="a run directory (what attnscope train printed)")
    if weights:
        parser.add_argument(
            "--weights",
            default="best",
            help=f"{' or '.join(names.WEIGHTS)} (default best), or a .safetensors file of the run",
        )


def _add_data(parser: argparse.ArgumentParser, what: str, split: str = "test") -> None:
    """--data, --data-option and --split: which images of the run (or of another source) to read."""
    parser.add_argument(
        "--data", metavar="SOURCE", help=f"{what} every row of this source instead ({', '.join(names.DATA_SOURCES)})"
    )
    _add_data_option(parser)
    parser.add_argument("--split", default=split, choices=names.SPLITS, help=f"the run's split (default {split})")


def _add_data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-option",
        action="append",
        metavar="KEY=VALUE",
        help="source option, e.g. --data-option csv_path=train.csv (repeatable)",
    )


def _add_settings(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="any config value by its dotted key, e.g. --set optim.lr=0.01 (repeatable)",
    )


def _pairs(values: list[str] | None) -> dict[str, Any]:
    """KEY=VALUE flags as a mapping (values read as YAML)."""
    from attnscope.engine.config import apply_settings

    return apply_settings({}, values) if values else {}


def _selection(args: argparse.Namespace) -> dict[str, Any]:
    """The data-selection fields of an options dataclass, from the shared flags."""
    images = tuple(getattr(args, "images", None) or ())
    return {
        "split": args.split,
        "source": args.data,
        "source_options": _pairs(args.data_option),
        "images": images,
        "skip_bad": args.skip_bad,
    }


def _open_run(args: argparse.Namespace) -> Run:
    from attnscope.engine.run import Run

    return Run.open(args.run, getattr(args, "weights", "best"), progress=not args.no_progress)


# --- layers, models -----------------------------------------------------------------------------------------


def _parser_layers(verbs: Any) -> None:
    parser = verbs.add_parser("layers", help="list the attention layers create_attn knows")
    parser.add_argument("--options", action="store_true", help="also list each layer's options")
    parser.set_defaults(handler=lambda args: _cmd_layers(args))


def _cmd_layers(args: argparse.Namespace) -> int:
    from attnscope.layers.registry import attn_options, describe_attn, list_attn

    layer_names = list_attn()
    width = max(len(n) for n in layer_names)
    for name in layer_names:
        print(f"{name:<{width}}  {describe_attn(name)}")
        if args.options:
            print(f"{'':<{width}}  options: {', '.join(attn_options(name))}")
    return 0


def _parser_models(verbs: Any) -> None:
    parser = verbs.add_parser("models", help="list the models create_model knows, with sizes")
    parser.add_argument("--num-classes", type=int, default=2, help="classifier width to count (default: 2)")
    parser.add_argument("--options", action="store_true", help="also list each model's options")
    parser.set_defaults(handler=lambda args: _cmd_models(args))


def _cmd_models(args: argparse.Namespace) -> int:
    from attnscope.models import list_models, model_entry, model_summary

    rows = [model_summary(name, num_classes=args.num_classes) for name in list_models()]
    print(f"{'model':<18} {'params':>8} {'input':>11} {'taps':>4}  {'weights':<20} paper")
    for row in rows:
        size = "x".join(str(n) for n in row["input_size"])
        print(
            f"{row['model']:<18} {row['params'] / 1e6:>7.2f}M {size:>11} {row['attention_taps']:>4}  "
            f"{row['pretrained']:<20} {row['paper']}"
        )
        if args.options:
            print(f"{'':<18} options: {', '.join(model_entry(str(row['model'])).options())}")
    print(f"(parameters with a {args.num_classes}-class head)")
    return 0


# --- train, demo --------------------------------------------------------------------------------------------

TRAIN_FLAGS = {
    "model": "model.name",
    "data": "data.source",
    "image_size": "data.image_size",
    "batch_size": "data.batch_size",
    "cache_dir": "data.cache_dir",
    "epochs": "trainer.epochs",
    "time_budget": "trainer.time_budget_s",
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


TIME_BUDGET_HELP = (
    "wall seconds for the whole run: a probe times a few batches, and the epochs that fit "
    "(at most --epochs) are planned, with the schedule laid out for them"
)


def _parser_train(verbs: Any) -> None:
    parser = verbs.add_parser(
        "train",
        help="train a model into a run directory",
        description="Options come from --config (a YAML file or a shipped name: "
        f"{', '.join(names.shipped_configs())}), then --set, then the flags; later ones win.",
    )
    parser.add_argument("--config", help="YAML run config, or the name of a shipped one")
    _add_settings(parser)
    parser.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its last finished epoch")
    parser.add_argument("--model", help="registered model name (attnscope models)")
    parser.add_argument(
        "--model-option",
        action="append",
        metavar="KEY=VALUE",
        help="model option (attnscope models --options); pretrained=true or pretrained=PATH loads ImageNet weights",
    )
    parser.add_argument("--data", metavar="SOURCE", help=f"data source: {', '.join(names.DATA_SOURCES)}")
    _add_data_option(parser)
    for flag, kind in (
        ("--image-size", int),
        ("--batch-size", int),
        ("--cache-dir", str),
        ("--epochs", int),
        ("--num-nodes", int),
        ("--seed", int),
    ):
        parser.add_argument(flag, type=kind)
    parser.add_argument(
        "--lr",
        type=_learning_rate,
        help="learning rate, or auto: the rate a range test suggests before training (its curve: RUN/lr_find.png)",
    )
    parser.add_argument("--time-budget", type=float, metavar="SECONDS", help=TIME_BUDGET_HELP)
    parser.add_argument("--optimizer", choices=names.OPTIMIZERS)
    parser.add_argument("--schedule", choices=names.SCHEDULES)
    parser.add_argument("--loss", choices=names.LOSSES)
    parser.add_argument("--precision", help="32-true, bf16-mixed, 16-mixed, ... (Lightning's names)")
    parser.add_argument("--accelerator", help="cpu, gpu, auto")
    parser.add_argument("--devices", help="how many devices (or 'auto')")
    parser.add_argument("--strategy", help="auto, ddp, ... (Lightning's names)")
    parser.add_argument("--run-dir", help="where the run goes (default runs/<model>-<time>)")
    _add_several_runs(parser)
    _add_common(parser)
    parser.set_defaults(handler=lambda args: _cmd_train(args))


def _add_several_runs(parser: argparse.ArgumentParser) -> None:
    """--stages (AG-CNN's, one run per stage) and --folds (cross-validation, one run per fold): a folder of runs."""
    parser.add_argument(
        "--stages",
        help="train an AG-CNN in stages, in this order (e.g. global,local,fusion): one run folder per stage "
        "under --run-dir, each starting from the one before",
    )
    parser.add_argument("--stage-epochs", help="epochs of each stage, comma-separated (default: --epochs)")
    parser.add_argument("--stage-lr", help="learning rate of each stage, comma-separated (default: --lr)")
    parser.add_argument(
        "--folds",
        type=int,
        help="k-fold cross-validation: one run per fold under --run-dir, each validated on its part of the non-test "
        "images (stratified, patients whole), the test split held out from all; evaluate the folder afterwards",
    )


def _learning_rate(value: str) -> float | str:
    """--lr: a number, or auto."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a number nor auto") from None


def _train_settings(args: argparse.Namespace) -> list[str]:
    """--set values, then each explicit flag as a dotted setting: flags override the file."""
    settings = list(args.set or [])
    settings += [f"{key}={getattr(args, flag)}" for flag, key in TRAIN_FLAGS.items() if getattr(args, flag) is not None]
    # pretrained is the model section's own key (model.pretrained), not a constructor option
    settings += [
        f"model.{option}" if option.startswith("pretrained=") else f"model.options.{option}"
        for option in args.model_option or []
    ]
    settings += [f"data.source_options.{option}" for option in args.data_option or []]
    if args.skip_bad:
        settings.append("data.skip_bad=true")
    if args.no_progress:
        settings += ["trainer.progress=false", "data.progress=false"]
    return settings


def _cmd_train(args: argparse.Namespace) -> int:
    from attnscope.engine.config import load_config
    from attnscope.training import resume, train, train_stages

    _quiet_lightning(args.verbose)
    if args.resume:
        display = ["trainer.progress=false", "data.progress=false"]
        changes = [setting for setting in _train_settings(args) if setting not in display]
        if args.config or changes or args.stages or args.stage_epochs or args.stage_lr or args.folds:
            raise ConfigError(
                "--resume continues a run exactly as configured; drop the other options "
                f"(its config is in {args.resume}; only --no-progress and --verbose go with it)"
            )
        result = resume(args.resume, progress=False if args.no_progress else None)
    elif args.stages:
        result = train_stages(load_config(args.config, _train_settings(args)), _stage_plan(args))
    elif args.folds:
        from attnscope.training.folds import train_folds

        result = train_folds(load_config(args.config, _train_settings(args)), args.folds)
    elif args.stage_epochs or args.stage_lr:
        raise ConfigError("--stage-epochs and --stage-lr go with --stages (e.g. --stages global,local,fusion)")
    else:
        result = train(load_config(args.config, _train_settings(args)))
    if result.is_global_zero:
        _print_best(result)
    return 0


def _stage_plan(args: argparse.Namespace):
    """--stages, --stage-epochs and --stage-lr as a StagePlan (values checked against the model later)."""
    from attnscope.training.stages import StagePlan

    def numbers(text: str | None, kind: type, option: str) -> tuple | None:
        if text is None:
            return None
        try:
            return tuple(kind(value) for value in text.split(","))
        except ValueError as error:
            raise ConfigError(f"{option} {text}: give comma-separated numbers, one per stage") from error

    return StagePlan(
        tuple(args.stages.split(",")),
        numbers(args.stage_epochs, int, "--stage-epochs"),
        numbers(args.stage_lr, float, "--stage-lr"),
    )


def _print_best(result: TrainResult) -> None:
    best = result.best
    if best:
        metrics = best.get("metrics", {})
        shown = "  ".join(
            f"{k} {metrics[k]:.4f}"
            for k in ("val/auc", "val/accuracy", "val/sensitivity_youden", "val/specificity_youden")
            if k in metrics
        )
        print(f"best epoch {best['epoch'] + 1} ({best['monitor']}): {shown}")
    if result.staged_root is not None:
        if (result.staged_root / "folds.json").is_file():
            print(f"cross-validation: {result.staged_root}; evaluate every fold and their ensemble with "
                  f"attnscope evaluate {result.staged_root}")  # fmt: skip
        else:
            print(f"staged run: {result.staged_root} (last stage: {result.run_dir.name})")
    else:
        print(f"run directory: {result.run_dir}")


def _parser_demo(verbs: Any) -> None:
    parser = verbs.add_parser("demo", help="train, evaluate, explain and index a model on built-in synthetic lesions")
    parser.add_argument(
        "--out", default="runs/demo", help="run directory (default runs/demo; an earlier demo run there is replaced)"
    )
    parser.add_argument("--epochs", type=int, help="override the demo's epochs")
    _add_settings(parser)
    _add_common(parser, skip_bad=False)
    parser.set_defaults(handler=lambda args: _cmd_demo(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    from attnscope.demo import QUERIES, DemoOptions, run_demo

    _quiet_lightning(args.verbose)
    result = run_demo(DemoOptions(args.out, args.epochs, tuple(args.set or ()), progress=not args.no_progress))
    _print_best(result.training)
    _print_metrics(result.evaluation)
    print(f"attention overlays (input | pool3 | pool4): {result.attention_grid}")
    print(f"report (metrics, curves, attention vs Grad-CAM scores, gallery): {result.report.path}")
    print(
        f"similarity index of the {result.index.count} training images (attention-pooled): {result.index.out}; "
        f"{QUERIES} test images and their most similar training images: {result.similar_page}"
    )
    print(f"demo finished in {result.seconds:.0f} s; everything is in {result.run_dir}")
    print(f"to look at its predictions, maps and similar cases in a browser: {serve_command(result)}")
    return 0


def _parser_calibrate(verbs: Any) -> None:
    parser = verbs.add_parser(
        "calibrate",
        help="fit a run's temperature scaling on its validation split (train does this itself)",
        description="Fits the temperature that makes the run's probabilities match observed frequencies on its "
        "validation split (Guo et al. 2017) and writes RUN/calibration.json; predict, evaluate, explain, serve and "
        "export then use it. For runs trained before calibration existed, or with trainer.calibration: none.",
    )
    _add_run(parser)
    _add_common(parser, skip_bad=False)
    parser.set_defaults(handler=lambda args: _cmd_calibrate(args))


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from attnscope.engine.recalibrate import calibrate_run

    with _open_run(args) as run:
        values = calibrate_run(run)
    before, after = values["val_before"], values["val_after"]
    print(f"temperature {values['temperature']} fitted on the {values['fitted_on']}")
    print(
        f"validation ECE {before['ece']:.4f} -> {after['ece']:.4f}, Brier {before['brier']:.4f} -> {after['brier']:.4f}"
    )
    print(f"written: {run.paths.calibration}")
    return 0


def _parser_compare(verbs: Any) -> None:
    parser = verbs.add_parser(
        "compare",
        help="two runs on the same images: paired DeLong test of AUC, McNemar at the thresholds, differences",
        description="Predicts the same images with both runs (the first run's test split, or --data) and tests, per "
        "finding, whether the difference is more than the images can tell: DeLong's paired test for AUC, McNemar's "
        "exact test for the decisions at each run's threshold, bootstrap intervals of the differences. Writes "
        "comparison.json and comparison.html.",
    )
    parser.add_argument("run_a", metavar="RUN_A", help="a run directory")
    parser.add_argument("run_b", metavar="RUN_B", help="another run with the same classes")
    _add_data(parser, "compare on")
    parser.add_argument("--out", help="output folder (default RUN_A/compare-<RUN_B's folder name>)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of the differences (default 1000)")
    _add_common(parser)
    parser.set_defaults(handler=lambda args: _cmd_compare(args))


def _cmd_compare(args: argparse.Namespace) -> int:
    from attnscope.engine.compare import CompareOptions
    from attnscope.engine.comparison import compare_runs, write_comparison
    from attnscope.engine.intervals import BootstrapOptions
    from attnscope.engine.run import Run

    selection = _selection(args)
    options = CompareOptions(
        selection["split"], selection["source"], dict(selection["source_options"]), selection["skip_bad"],
        BootstrapOptions(args.bootstrap),
    )  # fmt: skip
    progress = not args.no_progress
    with Run.open(args.run_a, progress=progress) as run_a, Run.open(args.run_b, progress=progress) as run_b:
        comparison = compare_runs(run_a, run_b, options)
        out = args.out or run_a.root / f"compare-{run_b.root.name}"
        write_comparison(comparison, out)
    print(f"{comparison.data}: {comparison.images} images")
    for column in comparison.columns:
        delong, test = column.delong, column.mcnemar
        print(f"  {column.name}: AUC {delong['auc_a']:.4f} vs {delong['auc_b']:.4f} (DeLong p {delong['p']:.4f}); "
              f"right only by A {test['only_a']}, only by B {test['only_b']} (McNemar p {test['p']:.4f})")  # fmt: skip
    print(f"comparison: {comparison.out}")
    return 0


def _parser_generate(verbs: Any) -> None:
    parser = verbs.add_parser(
        "generate",
        help="write a generated data set to a folder, as real ones come (chest X-rays: DICOM, 16-bit PNG, CSVs)",
        description="Writes generated chest-X-ray-like films with four findings and their boxes: 16-bit PNGs with "
        "NIH ChestX-ray14's CSV, box file and split lists, and the same films as DICOM with a CheXpert-style CSV. "
        "The patients, names and dates in the DICOM files are invented.",
    )
    parser.add_argument("kind", choices=["chest_xrays"], help="what to generate")
    parser.add_argument("out", help="a new folder (an earlier generated set there is replaced with --force)")
    parser.add_argument("--count", type=int, default=400, help="films (default 400; two per patient)")
    parser.add_argument("--size", type=int, default=256, help="pixels per side (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same films (default 0)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="patients listed in test_list.txt")
    parser.add_argument("--force", action="store_true", help="replace a set generated there before")
    _add_common(parser, skip_bad=False)
    parser.set_defaults(handler=lambda args: _cmd_generate(args))


def _cmd_generate(args: argparse.Namespace) -> int:
    from attnscope.data.sources.chest_files import write_chest_xray_set

    out = write_chest_xray_set(
        args.out, args.count, args.size, args.seed, test_fraction=args.test_fraction, replace=args.force,
        progress=not args.no_progress,
    )  # fmt: skip
    print(f"{args.count} films in {out}: images/ (16-bit PNG) with Data_Entry_2017.csv, BBox_List_2017.csv, "
          "test_list.txt and train_val_list.txt; dicom/ with train.csv (CheXpert layout)")  # fmt: skip
    print(f"train on it: {generated_train_command(out)}")
    return 0


def generated_train_command(out: Path) -> str:
    """The command that trains the chest X-ray recipe on a generated set at ``out``."""
    import shlex

    command = "attnscope train --config chest_xray_generated --run-dir runs/chest_xray"
    if out == Path("chest_xrays"):  # where the recipe looks
        return command
    options = {"csv_path": "Data_Entry_2017.csv", "image_root": "images", "boxes_csv": "BBox_List_2017.csv",
               "test_list": "test_list.txt", "train_list": "train_val_list.txt"}  # fmt: skip
    return command + "".join(f" --data-option {shlex.quote(f'{k}={out / v}')}" for k, v in options.items())


def serve_command(result: Any) -> str:
    """The command that serves a demo's run and index, spelt as this program was called."""
    import shlex

    program = sys.argv[0] if Path(sys.argv[0]).name == "attnscope" else "attnscope"
    words = [program, "serve", str(result.run_dir), "--index", str(result.index.out)]
    return " ".join(map(shlex.quote, words)) + "   (then open http://127.0.0.1:8000/)"


# --- evaluate, report, predict ------------------------------------------------------------------------------


TTA_HELP = "average over the flips the run was trained with, the threshold chosen again on validation with them"


def _parser_evaluate(verbs: Any) -> None:
    parser = verbs.add_parser("evaluate", help="metrics and plots of a run on its test split or other data")
    _add_run(parser)
    _add_data(parser, "evaluate on")
    parser.add_argument("--out", help="output folder (default RUN/evaluation, RUN/evaluation-tta with --tta)")
    parser.add_argument("--tta", action="store_true", help=TTA_HELP + " (no report is written from it)")
    parser.add_argument("--no-report", action="store_true", help="do not write RUN/report.html afterwards")
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="resamples of the confidence intervals (default 1000; 0: none)"
    )
    parser.add_argument("--confidence", type=float, default=0.95, help="the intervals' level (default 0.95)")
    parser.add_argument(
        "--refer-sensitivity",
        type=float,
        default=0.95,
        help="the sensitivity a referral band around the threshold must reach on validation among the images it "
        "leaves to the model (default 0.95; the least sure images go to a clinician)",
    )
    parser.add_argument(
        "--by",
        action="append",
        metavar="COLUMN",
        help="metrics per subgroup: a column of the source CSV (site, sex, age: numbers banded at quartiles) or a "
        "DICOM tag as dicom:Keyword (dicom:Manufacturer); repeatable",
    )
    parser.add_argument(
        "--bootstrap-method", choices=["percentile", "BCa"], default="percentile", help="default percentile"
    )
    _add_common(parser)
    parser.set_defaults(handler=lambda args: _cmd_evaluate(args))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from attnscope.engine.inference import EvaluateOptions
    from attnscope.engine.rundir import fold_runs
    from attnscope.explain.report import evaluate_with_report

    if fold_runs(Path(args.run)):
        return _evaluate_folds(args)
    with _open_run(args) as run:
        options = EvaluateOptions(
            **_selection(args), out=args.out, tta=args.tta, bootstrap=args.bootstrap, confidence=args.confidence,
            bootstrap_method=args.bootstrap_method, by=tuple(args.by or ()),
            refer_sensitivity=args.refer_sensitivity,
        )  # fmt: skip
        evaluation, report = evaluate_with_report(run, options, report=not args.no_report)
    _print_metrics(evaluation)
    if report is not None:
        print(f"report: {report.path}")
    return 0


def _evaluate_folds(args: argparse.Namespace) -> int:
    """``evaluate`` of a cross-validation folder: every fold, their mean and spread, the fold ensemble."""
    from attnscope.engine.folds import evaluate_folds
    from attnscope.engine.inference import EvaluateOptions

    options = EvaluateOptions(**_selection(args), out=args.out, bootstrap=args.bootstrap, confidence=args.confidence)
    result = evaluate_folds(args.run, options, progress=not args.no_progress)
    print(f"{len(result.folds)} folds on {options.describe()}, mean ± standard deviation (each fold):")
    for name, mean in result.mean.items():
        folds = " ".join(f"{fold[name]:.4f}" for fold in result.folds)
        print(f"  {name:<26} {mean:.4f} ± {result.sd[name]:.4f}  ({folds})")
    print("the fold ensemble (their calibrated probabilities averaged):")
    _print_metrics(result.evaluation)
    if not args.no_report and options.split == "test" and options.source is None:
        from attnscope.engine.run import Run
        from attnscope.explain.report import ReportOptions, write_report

        with Run.open(args.run, progress=not args.no_progress) as ensemble:
            print(f"report: {write_report(ensemble, ReportOptions(skip_bad=args.skip_bad), result.evaluation).path}")
    return 0


def _print_metrics(result: Evaluation) -> None:
    metrics = result.metrics
    averaged = f", averaged over {', '.join(metrics['tta'])}" if "tta" in metrics else ""
    print(f"{result.data} ({metrics['rows']} images, {result.kind}{averaged}):")
    drawn = metrics.get("intervals", {})
    for name in names.HEADLINE_METRICS:
        if name in metrics:
            print(f"  {name:<26} {metrics[name]:.4f}{interval_text(drawn, name)}")
    if drawn.get("intervals"):
        print(f"  ({drawn['level']:.0%} intervals: {drawn['method']}, {drawn['resamples']} resamples of "
              f"{drawn['units']} {drawn['unit']}s, seed {drawn['seed']}; DeLong's for AUC)")  # fmt: skip
    if "calibration" in metrics:
        before = metrics.get("calibration_uncalibrated", {}).get("ece")
        change = f" (uncalibrated {before:.4f})" if before is not None else ""
        print(f"  {'ECE':<26} {metrics['calibration']['ece']:.4f}{change}")
    if isinstance(metrics.get("threshold"), float):
        print(f"  {'threshold (val)':<26} {metrics['threshold']:.4f}")
    _print_breakdowns(metrics)
    for branch, values in metrics.get("branches", {}).items():
        print(f"  {branch + ' branch AUC':<26} {values['auc']:.4f}")
    print(f"metrics and plots: {result.out}")


def _print_breakdowns(metrics: dict) -> None:
    """The referral band's effect and each subgroup's AUC, where the evaluation has them."""
    for name, values in metrics.get("referral", {}).get("findings", {}).items():
        band, tested = values["band"], values["test"]
        print(
            f"  referral ({name}): refer p in [{band['low']:.2f}, {band['high']:.2f}] -> {tested['referred']:.0%} "
            f"referred; the rest: sensitivity {tested['sensitivity']:.3f}, specificity {tested['specificity']:.3f}"
        )
    for by, found in metrics.get("subgroups", {}).items():
        print(f"  by {by}:")
        for name, values in found.items():
            drawn = values["intervals"].get("auc")
            within = f" ({drawn[0]:.4f} to {drawn[1]:.4f})" if drawn and not math.isnan(drawn[0]) else ""
            print(f"    {name:<22} {values['images']:>6} images  AUC {values['auc']:.4f}{within}  "
                  f"gap {values['auc_gap']:+.4f}")  # fmt: skip


def interval_text(drawn: dict, name: str) -> str:
    """`` (0.91 to 0.95; DeLong 0.92 to 0.95)`` of a metric, or nothing where no interval was drawn."""
    interval = drawn.get("intervals", {}).get(name)
    if not interval or any(math.isnan(v) for v in interval):
        return ""
    delong = drawn.get("delong", {}).get(name)
    extra = f"; DeLong {delong[0]:.4f} to {delong[1]:.4f}" if delong and not math.isnan(delong[0]) else ""
    return f"   ({interval[0]:.4f} to {interval[1]:.4f}{extra})"


def _parser_report(verbs: Any) -> None:
    parser = verbs.add_parser("report", help="one self-contained HTML page about a run")
    _add_run(parser)
    parser.add_argument("--out", help="output file (default RUN/report.html)")
    _add_force(parser)
    parser.add_argument("--per-group", type=int, default=4, help="gallery images per outcome group (default 4)")
    parser.add_argument("--score-images", type=int, default=32, help="test images scored (default 32)")
    parser.add_argument("--steps", type=int, default=8, help="steps of the deletion/insertion curves")
    parser.add_argument(
        "--method",
        action="append",
        metavar="METHOD",
        help="methods scored, as explain's --method (default: default)",
    )
    _add_common(parser)
    parser.set_defaults(handler=lambda args: _cmd_report(args))


def _cmd_report(args: argparse.Namespace) -> int:
    from attnscope.explain.report import ReportOptions, write_report

    with _open_run(args) as run:
        report = write_report(
            run,
            ReportOptions(
                args.out,
                args.per_group,
                args.score_images,
                args.steps,
                args.skip_bad,
                tuple(args.method or ["default"]),
                args.force,
            ),
        )
    print(f"report: {report.path}")
    return 0


def _parser_predict(verbs: Any) -> None:
    parser = verbs.add_parser("predict", help="per-class probabilities of images as a CSV")
    _add_run(parser)
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders")
    parser.add_argument("--csv", help="a CSV listing the images")
    parser.add_argument("--column", default="path", help="the CSV's image column (default: path)")
    parser.add_argument("--image-root", help="folder the CSV's names are relative to (default: the CSV's)")
    parser.add_argument("--out", help="output CSV (default RUN/predictions.csv, RUN/predictions-tta.csv with --tta)")
    _add_force(parser)
    parser.add_argument("--tta", action="store_true", help=TTA_HELP)
    parser.add_argument(
        "--uncertainty",
        choices=["tta", "mc_dropout", "ensemble"],
        help="a column of each image's uncertainty: the spread of its probability over the trained flips, 20 "
        "dropout samples, or the folds of a cross-validation folder (averaged probabilities are then written)",
    )
    parser.add_argument(
        "--refer-sensitivity",
        type=float,
        help="a refer column: whether the image lies in the band around the threshold that, on validation, leaves "
        "the model this sensitivity on what it decides (e.g. 0.95)",
    )
    _add_common(parser)
    parser.set_defaults(handler=lambda args: _cmd_predict(args))


def _cmd_predict(args: argparse.Namespace) -> int:
    from attnscope.engine.inference import PredictOptions, images_from_csv, predict

    listed, rejected = images_from_csv(args.csv, args.column, args.image_root, args.skip_bad) if args.csv else ([], [])
    images = tuple([*args.images, *listed])
    with _open_run(args) as run:
        options = PredictOptions(
            images, args.out, args.skip_bad, args.tta, args.force, tuple(rejected), args.uncertainty,
            args.refer_sensitivity,
        )  # fmt: skip
        result = predict(run, options)
    print(f"{result.rows} predictions: {result.out}")
    if result.skipped:
        print(f"{result.skipped} image(s) left out (--skip-bad): {result.bad_rows}")
    return 0


# --- explain ------------------------------------------------------------------------------------------------


def _parser_explain(verbs: Any) -> None:
    parser = verbs.add_parser("explain", help="attention maps and CAMs of a run, drawn and scored")
    _add_run(parser)
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders (default: the split)")
    parser.add_argument(
        "--method",
        action="append",
        metavar="METHOD",
        help=f"default ({' '.join(names.DEFAULT_EXPLAIN_METHODS)}), all, or one of "
        f"{', '.join(names.EXPLAIN_METHODS)} (repeatable)",
    )
    parser.add_argument("--eigen-smooth", action="store_true", help="layer CAMs: the first principal component")
    parser.add_argument("--aug-smooth", action="store_true", help="average over flipped and brightened views")
    parser.add_argument("--road", action="store_true", help="also score ROAD (MoRF/LeRF; eight passes a map)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="inputs per extra pass of score-, ablation-cam and the pixel methods"
    )
    _add_data(parser, "explain (with masks: score)")
    parser.add_argument("--count", type=int, default=16, help="images to explain (0: all; default 16)")
    parser.add_argument(
        "--target",
        metavar="CLASS",
        help="the class whose maps are drawn: a name or an index, or all for one map per class (a map per "
        "finding of a chest X-ray run); default: each image's predicted class",
    )
    parser.add_argument("--layer", action="append", help="CAM target layer (default: the model's; repeatable)")
    parser.add_argument(
        "--sanity",
        type=int,
        nargs="?",
        const=16,
        default=0,
        metavar="N",
        help="sanity checks (Adebayo et al. 2018) on N images (default 16): does each method's map depend on the "
        "weights and on the image? (sanity.json)",
    )
    parser.add_argument("--steps", type=int, default=16, help="steps of the deletion/insertion curves")
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.4,
        help="heat map weight over the image (default 0.4, as the AttnVGG melanoma tutorial)",
    )
    parser.add_argument("--cmap", default="jet", help="matplotlib colour map of the overlays (default jet)")
    parser.add_argument(
        "--no-overlays", action="store_true", help="scores and raw maps only (drawing is most of the time)"
    )
    parser.add_argument("--out", help="output folder (default RUN/explain)")
    _add_common(parser)
    parser.set_defaults(handler=lambda args: _cmd_explain(args))


def _cmd_explain(args: argparse.Namespace) -> int:
    from attnscope.explain.explainer import ExplainOptions, explain

    options = ExplainOptions(
        **_selection(args),
        methods=tuple(args.method or ["default"]),
        count=args.count,
        steps=args.steps,
        cam_layers=tuple(args.layer or ()),
        eigen_smooth=args.eigen_smooth,
        aug_smooth=args.aug_smooth,
        batch_size=args.batch_size,
        road=args.road,
        overlays=not args.no_overlays,
        alpha=args.alpha,
        cmap=args.cmap,
        target=args.target,
        out=args.out,
        sanity=args.sanity,
    )
    with _open_run(args) as run:
        result = explain(run, options)
    print(f"{result.images} image(s), methods: {', '.join(result.methods)}")
    _print_scores(result.summary)
    if result.sanity is not None:
        print(f"sanity checks on {result.sanity.images} image(s): weights randomised from the top, maps vs the mean")
        for method, flag in result.sanity.flags().items():
            print(f"  {method:<18} {flag or 'passes both'}")
    masks = "" if result.has_masks else " (no masks: faithfulness only)"
    print(f"overlays, raw maps and scores.csv{masks}: {result.out}")
    return 0


def _print_scores(summary: dict[str, dict[str, float]]) -> None:
    from attnscope.explain.explainer import SCORE_NAMES

    shown = [n for n in SCORE_NAMES if any(n in entry for entry in summary.values())]
    width = max([len(m) for m in summary] + [6])
    columns = [max(len(n), 8) for n in shown]
    print(f"{'method':<{width}}  " + "  ".join(f"{n:>{c}}" for n, c in zip(shown, columns, strict=True)))
    for method, entry in summary.items():
        cells = [f"{entry[n]:>{c}.3f}" if n in entry else " " * c for n, c in zip(shown, columns, strict=True)]
        print(f"{method:<{width}}  " + "  ".join(cells))


# --- index, search ------------------------------------------------------------------------------------------


def _parser_index(verbs: Any) -> None:
    parser = verbs.add_parser(
        "index",
        help="embed a run's images into a similarity index (FAISS)",
        description="Embeds the run's training split (or --split, or every row of --data) "
        "with the run's model and saves a searchable index folder.",
    )
    _add_run(parser)
    parser.add_argument(
        "--out",
        required=True,
        metavar="INDEX",
        help="a new index folder (an existing attnscope index only with --add or --force)",
    )
    _add_data(parser, "index", split="train")
    parser.add_argument(
        "--kind",
        default="flat",
        choices=names.INDEX_KINDS,
        help="flat: exact; ivf, hnsw: approximate, for large galleries; lsh, lsh_buckets: hashing",
    )
    parameters = "; ".join(f"{kind} {', '.join(params)}" for kind, params in names.INDEX_PARAMS.items() if params)
    parser.add_argument(
        "--param", action="append", metavar="KEY=VALUE", help=f"index parameter: {parameters} (repeatable)"
    )
    parser.add_argument(
        "--stages",
        help="comma-separated modules whose feature maps are pooled "
        "(default: the model's last feature map, e.g. layer3,layer4 for a ResNet)",
    )
    parser.add_argument(
        "--attention-pooling", action="store_true", help="also pool each stage under the model's own attention maps"
    )
    parser.add_argument("--taps", help="comma-separated attention taps to pool with (default: every spatial one)")
    parser.add_argument(
        "--pca", type=int, default=0, metavar="DIM", help="reduce embeddings to DIM with PCA fitted on the gallery"
    )
    parser.add_argument("--fp16", action="store_true", help="store vectors and the index in float16 (half the memory)")
    parser.add_argument("--no-thumbnails", action="store_true", help="keep no thumbnails (search --html shows none)")
    parser.add_argument("--add", action="store_true", help="add these images to the index at --out")
    parser.add_argument("--force", action="store_true", help="replace the attnscope index at --out")
    parser.add_argument(
        "--train-reranker",
        action="store_true",
        help="train a cross-attention re-ranker on the indexed images and their labels (search --rerank uses it)",
    )
    parser.add_argument("--reranker-epochs", type=int, default=3, help="epochs of the re-ranker (default 3)")
    _add_common(parser)
    parser.set_defaults(handler=lambda args: _cmd_index(args))


def _cmd_index(args: argparse.Namespace) -> int:
    from attnscope.retrieval.rerank import ReRankerOptions
    from attnscope.retrieval.service import IndexOptions, build_index

    options = IndexOptions(
        **_selection(args),
        out=args.out,
        kind=args.kind,
        params=_pairs(args.param),
        stages=_listed(args.stages),
        attention_pooling=args.attention_pooling,
        taps=_listed(args.taps),
        pca_dim=args.pca,
        fp16=args.fp16,
        thumbnails=not args.no_thumbnails,
        add=args.add,
        force=args.force,
        train_reranker=args.train_reranker,
        reranker=ReRankerOptions(epochs=args.reranker_epochs),
    )
    with _open_run(args) as run:
        result = build_index(run, options)
    params = "".join(f", {name}={value}" for name, value in result.params.items())
    print(
        f"{'added' if args.add else 'indexed'} {result.added} images: {result.count} in {result.out} "
        f"({result.kind}{params}, {result.dim}-d vectors)"
    )
    if result.skipped:
        print(f"{result.skipped} image(s) could not be read or used and were left out (bad rows skipped)")
    return 0


def _add_force(parser: argparse.ArgumentParser, option: str = "--out") -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help=f"replace a regular file at {option} that attnscope did not write (never a folder, a link, a device, "
        "or a file of a run or index)",
    )


def _listed(value: str | None) -> tuple[str, ...]:
    return tuple(value.split(",")) if value else ()


def _parser_search(verbs: Any) -> None:
    parser = verbs.add_parser("search", help="the most similar indexed images of query images")
    parser.add_argument("index", metavar="INDEX")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--out", help="also write the neighbours as a CSV")
    parser.add_argument("--html", metavar="PAGE", help="write a page with each query and its neighbours")
    _add_force(parser, "--out or --html")
    parser.add_argument("--run", help="the run the index was built from, if it moved")
    parser.add_argument(
        "--rerank",
        nargs="?",
        type=int,
        const=50,
        default=0,
        metavar="CANDIDATES",
        help="reorder each query's first CANDIDATES (default 50) with the index's re-ranker (index --train-reranker)",
    )
    parser.add_argument(
        "--include-same",
        action="store_true",
        help="keep neighbours that are the query image itself or another image of its patient "
        "(left out by default: they are no second opinion)",
    )
    _add_common(parser)
    parser.set_defaults(handler=lambda args: _cmd_search(args))


def _cmd_search(args: argparse.Namespace) -> int:
    from attnscope.outputs import NEIGHBOURS, PAGE, check_output_file
    from attnscope.retrieval import result_rows, search_images, write_results_csv
    from attnscope.retrieval.page import write_search_page
    from attnscope.retrieval.service import SearchOptions

    for out, output in ((args.out, NEIGHBOURS), (args.html, PAGE)):
        if out:
            check_output_file(out, output, args.force)  # before the search, not after it
    options = SearchOptions(k=args.k, rerank_k=args.rerank, include_same=args.include_same)
    index, result = search_images(args.index, args.images, options, args.run, args.skip_bad, not args.no_progress)
    lines = result_rows(index, result)
    for query in result.queries:
        print(f"{query['id']}:")
        for line in (line for line in lines if line["query"] == query["id"]):
            reranked = f"  re-ranker {line['rerank_score']:.3f}" if "rerank_score" in line else ""
            print(f"  {line['rank']:>3}  {line['similarity']:.4f}  {line['label']:<16} {line['id']}{reranked}")
    if args.out:
        print(f"neighbours: {write_results_csv(lines, args.out, args.force)}")
    if args.html:
        print(f"page: {write_search_page(index, result, args.html, args.index, args.force)}")
    return 0


def _parser_export(verbs: Any) -> None:
    parser = verbs.add_parser(
        "export",
        help="the run's model as ONNX, checked with onnxruntime",
        description="Exports the run's model (uint8 images in, logits out, normalisation inside) with a dynamic "
        "batch axis, checks it with onnxruntime against PyTorch on the run's test images, and writes it.",
    )
    _add_run(parser)
    parser.add_argument("--format", default="onnx", choices=names.EXPORT_FORMATS, help="(default onnx)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--with-maps", action="store_true", help="also output every spatial attention tap")
    parser.add_argument("--out", help="output file (default RUN/model.onnx)")
    _add_force(parser)
    parser.add_argument("--check-images", type=int, default=64, help="images the check runs (default 64)")
    _add_data(parser, "check on")
    _add_common(parser)
    parser.set_defaults(handler=lambda args: _cmd_export(args))


def _cmd_export(args: argparse.Namespace) -> int:
    from attnscope.engine.export import ExportOptions, export

    options = ExportOptions(
        **_selection(args),
        format=args.format,
        opset=args.opset,
        with_maps=args.with_maps,
        out=args.out,
        check_images=args.check_images,
        force=args.force,
    )
    with _open_run(args) as run:
        result = export(run, options)
    for name, shape in result.outputs.items():
        print(f"  {name:<24} {' x '.join(map(str, shape))}")
    maps = f", maps {result.max_map_difference:.1e}" if result.max_map_difference is not None else ""
    print(
        f"checked with onnxruntime on {result.images_checked} images: largest difference logits "
        f"{result.max_logit_difference:.1e}{maps}; {result.same_class} of {result.images_checked} same class"
    )
    print(f"ONNX opset {result.opset} ({result.seconds:.1f} s): {result.out}")
    return 0


# --- serve --------------------------------------------------------------------------------------------------

LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_VARIABLE = "ATTNSCOPE_TOKEN"


def _parser_serve(verbs: Any) -> None:
    parser = verbs.add_parser(
        "serve",
        help="a web viewer and JSON API for a run's predictions, maps and similar cases",
        description="Serves RUN on FastAPI + uvicorn: the viewer at /, the API under /v1 (OpenAPI docs at /docs). "
        f"Binds to 127.0.0.1 unless told otherwise; the token may also come from ${TOKEN_VARIABLE}.",
    )
    _add_run(parser)
    parser.add_argument("--index", help="a similarity index of the run (attnscope index) for /v1/similar")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8000, help="1 to 65535 (default 8000)")
    parser.add_argument("--token", help=f"require Authorization: Bearer TOKEN on the API (or set ${TOKEN_VARIABLE})")
    parser.add_argument(
        "--allow-no-token", action="store_true", help="listen beyond this machine without a token (a trusted network)"
    )
    parser.add_argument("--cors", metavar="ORIGIN", help="let pages of this origin call the API (default: none)")
    parser.add_argument("--max-batch", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch gathers (default 5 ms)")
    parser.add_argument("--no-batching", action="store_true", help="one forward pass per request")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default 20 MB)")
    parser.add_argument("--max-images", type=int, default=16, help="images per request (default 16)")
    _add_serve_limits(parser)
    parser.set_defaults(handler=lambda args: _cmd_serve(args))


def _add_serve_limits(parser: argparse.ArgumentParser) -> None:
    """The limits that keep a hostile or careless client from stalling the server (defaults: ServeOptions)."""
    limits = parser.add_argument_group("limits (what one client may take of the server)")
    limits.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a host name the server answers to (repeat for more; default: this machine's loopback names, or any "
        "name when listening on every address with a token)",
    )
    for flag, kind, default, meaning in (
        ("--max-decoded-mb", float, 128.0, "the most one image's pixels may take decoded"),
        ("--max-cost", int, 400, "forward passes one request may cost (images x its method's cost)"),
        ("--max-queue", int, 64, "images that may wait for a forward pass; more are answered 503"),
        ("--deadline", float, 60.0, "seconds a request may wait and compute before it is cancelled (504)"),
        ("--body-timeout", float, 30.0, "seconds a request's body may take to arrive (408)"),
        ("--max-header-kb", int, 16, "the largest request line and headers, together"),
        ("--header-timeout", float, 10.0, "seconds a request's line and headers may take to arrive"),
        ("--keep-alive", float, 5.0, "seconds an idle connection is kept open"),
        ("--max-connections", int, 64, "connections and requests at once; more are answered 503"),
    ):
        limits.add_argument(flag, type=kind, default=default, help=f"{meaning} (default {default:g})")
    limits.add_argument(
        "--max-client-connections",
        type=int,
        help="connections one client address may hold at once; more are answered 503 (default: a quarter of "
        "--max-connections; behind a reverse proxy, where every client has the proxy's address, set it to "
        "--max-connections)",
    )
    limits.add_argument(
        "--max-client-queue",
        type=int,
        help="images one client address may have waiting; more are answered 503 (default: a quarter of "
        "--max-queue, at least --max-images)",
    )


def _allowed_hosts(args: argparse.Namespace, token: str | None) -> tuple[str, ...]:
    """The names the server answers to: as given; else the loopback names (and the address listened on when
    it is one address); any name when listening on every address, where the token is the guard."""
    if args.allowed_host:
        return tuple(args.allowed_host)
    if args.host in ("0.0.0.0", "::", ""):
        return ("*",)
    return tuple(dict.fromkeys([*LOOPBACK, args.host]))


def _serve_options(args: argparse.Namespace, token: str | None) -> Any:
    from attnscope.serve.app import ServeOptions

    return ServeOptions(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        batching=not args.no_batching,
        token=token,
        cors=args.cors,
        allowed_hosts=_allowed_hosts(args, token),
        max_upload_mb=args.max_upload_mb,
        body_timeout_s=args.body_timeout,
        max_images=args.max_images,
        max_decoded_mb=args.max_decoded_mb,
        max_cost=args.max_cost,
        max_queue=args.max_queue,
        deadline_s=args.deadline,
        max_header_kb=args.max_header_kb,
        header_timeout_s=args.header_timeout,
        keep_alive_s=args.keep_alive,
        max_connections=args.max_connections,
        max_client_connections=args.max_client_connections,
        max_client_queue=args.max_client_queue,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    try:
        import uvicorn

        from attnscope.serve.app import create_app
        from attnscope.serve.protocol import uvicorn_settings
    except ImportError as error:
        raise ConfigError(f"attnscope serve needs {error.name}: pip install 'attnscope[serve]'") from error
    from attnscope.engine.run import Run
    from attnscope.retrieval.index import SimilarityIndex
    from attnscope.serve import ModelService

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port={args.port} must be from 1 to 65535")
    token = args.token or os.environ.get(TOKEN_VARIABLE) or None
    if args.host not in LOOPBACK and token is None and not args.allow_no_token:
        raise ConfigError(
            f"--host {args.host} lets other machines reach the API: give --token (or ${TOKEN_VARIABLE}), "
            "or --allow-no-token on a network you trust"
        )
    options = _serve_options(args, token)
    options.check()  # before the run is opened: a bad flag is one line at once
    run = Run.open(args.run, args.weights, progress=False)
    index_path = Path(args.index) if args.index else None
    index = SimilarityIndex.load(index_path) if index_path else None
    app = create_app(ModelService(run, index, index_path), options)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {run.root} at http://{shown}:{args.port}/ (API docs: /docs); Ctrl-C stops", flush=True)
    limits = uvicorn_settings(options)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.verbose == 0 else "info", **limits)
    return 0


# --- the program --------------------------------------------------------------------------------------------

VERB_PARSERS: tuple[Callable[[Any], None], ...] = (
    _parser_layers,
    _parser_models,
    _parser_train,
    _parser_evaluate,
    _parser_predict,
    _parser_explain,
    _parser_report,
    _parser_index,
    _parser_search,
    _parser_export,
    _parser_serve,
    _parser_demo,
    _parser_generate,
    _parser_calibrate,
    _parser_compare,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnscope",
        description="Build, train, evaluate and explain attention-augmented image classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"attnscope {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for add_verb in VERB_PARSERS:
        add_verb(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    if args.verb is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except AttnscopeError as error:
        if args.debug:
            raise
        print(f"attnscope: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:  # the machine's, not the input's: a full disk, a folder without permission
        if args.debug:
            raise
        print(f"attnscope: error: {describe_os_error(error)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("attnscope: interrupted", file=sys.stderr)
        return 130


FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def describe_os_error(error: OSError) -> str:
    """One line for an error of the file system: what, where, and what to do."""
    where = f"{error.filename}: " if error.filename else ""
    what = error.strerror or str(error)
    if error.errno in FULL_DISK:
        return (
            f"{where}{what}: the disk (or a size limit) is full; free space and run again "
            "(attnscope writes files whole or not at all, so nothing was left half-written)"
        )
    return f"{where}{what} (run with --debug for the traceback)"


class _TqdmHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Log lines written through tqdm, so they do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _configure_logging(verbose: int) -> None:
    """attnscope's INFO lines (the per-epoch summary) are shown; other libraries' only when -v."""
    handler = _TqdmHandler()
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
