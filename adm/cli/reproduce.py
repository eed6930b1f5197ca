"""`adm reproduce`: one row of the paper's tables in one command. Downloads the row's checkpoints and reference
batch into the cache (verified, resumable), runs `adm sample` and `adm evaluate` with the row's settings (the
same code, resumable, split under torchrun), and writes OUT/report.md and OUT/report.json: the measured
FID / sFID / IS / precision / recall beside the paper's, with the settings. The rows are data: adm.hub.recipes."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from adm.cli.common import add_parser, add_runtime_args, png_name, writable_dir, write_json_file
from adm.errors import ConfigError, DataError

EPILOG = """examples:
  adm reproduce --list                                   # the rows and the paper's numbers
  adm reproduce imagenet64 --dry-run                     # files, settings, commands, cost: nothing runs
  adm reproduce imagenet64 --device cuda --dtype bf16 --batch-size 256 --inception nvidia
  torchrun --nproc_per_node 8 -m adm reproduce imagenet256 --batch-size 64   # sampling split over 8 GPUs
  torchrun --nproc_per_node 8 -m adm reproduce imagenet64 -n 10000  # -n, not --num, under torchrun
  adm reproduce imagenet256-cascade --published          # OpenAI's own samples: checks the evaluator
  adm reproduce lsun-bedroom --num 1000 --out /tmp/bed   # a quick look (figures NOT comparable)
  adm reproduce imagenet128 --download-only              # fetch and verify the files, then stop

A rerun of the same command resumes: cached files are verified and reused, a partial download continues,
images already in OUT/samples are kept and only the missing ones are made. Output: OUT/samples/ (the
`adm sample` directory), OUT/metrics.json (`adm evaluate --json`), OUT/report.md, OUT/report.json.
Details, costs and pitfalls: docs/reproduce.md.
"""


def register(subparsers) -> None:
    p = add_parser(
        subparsers, "reproduce", help="reproduce a row of the paper's tables: download, sample, evaluate, report",
        description="Reproduce one row of the paper's tables (guided-diffusion's released models): download the "
        "checkpoints and the official reference batch into the cache (verified), sample with the row's settings "
        "(as `adm sample`, resumable, split under torchrun), evaluate (as `adm evaluate`) and write a report "
        "of the measured metrics beside the paper's.",
        epilog=EPILOG,
    )
    p.add_argument("row", nargs="?", metavar="ROW", help="the row (see --list), e.g. imagenet64")
    p.add_argument("--list", action="store_true", help="list the rows with the paper's numbers")
    p.add_argument("--dry-run", action="store_true",
                   help="show the plan (files, URLs, settings, the adm commands, model calls) and stop")
    p.add_argument("--download-only", action="store_true", help="download and verify the row's files, then stop")
    p.add_argument("--published", action="store_true",
                   help="evaluate OpenAI's published sample batch of the row instead of sampling (checks the evaluator)")
    p.add_argument("-n", "--num", type=int, help="number of samples (default: the paper's 50,000; fewer: the report "
                   "says the figures are not comparable); under torchrun write -n N (torchrun's parser takes --num "
                   "for an abbreviation of its --numa-binding)")
    p.add_argument("--out", help="output directory (default ./reproduce/ROW)")
    p.add_argument("--seed", type=int, default=0, help="first seed: image i uses seed S+i (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="images per sampling batch (default 16)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--features", choices=("inception", "tiny"), default="inception",
                   help="feature network: the paper's Inception (default) or 'tiny' for smoke tests (NOT comparable)")
    g.add_argument("--inception", metavar="PATH|nvidia|URL",
                   help="Inception TorchScript file; 'nvidia' downloads NVIDIA's inception-2015-12-05.pt (with the "
                        "1008-way logits: enables the IS) into the cache (default: as `adm evaluate`)")
    g.add_argument("--eval-batch-size", type=int, default=64, help="images per Inception pass (default 64)")
    add_runtime_args(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the networks while sampling")
    p.set_defaults(func=run_reproduce)


# -- the plan --------------------------------------------------------------------------------------
@dataclass
class Plan:
    recipe: object
    num: int
    out: Path
    files: list = field(default_factory=list)   # RemoteFile
    sample: list[str] | None = None              # `adm sample` argv (None: --published)
    evaluate: list[str] = field(default_factory=list)
    cost: dict = field(default_factory=dict)
    published: bool = False

    @property
    def samples_dir(self) -> Path:
        return self.out / "samples"

    def commands(self) -> list[str]:
        return ["adm " + shlex.join(argv) for argv in (self.sample, self.evaluate) if argv]

    def file(self, role: str):
        return next(f for f in self.files if f.role == role)


def _is_conditional(recipe) -> bool:
    from adm.hub import presets

    return bool(recipe.classifier) or bool(getattr(presets.get(recipe.model).config, "num_classes", 0))


def make_plan(args: argparse.Namespace):
    from adm.hub import recipes

    recipe = recipes.get(args.row)
    num = recipe.num if args.num is None else args.num
    if num < 1:
        raise ConfigError(f"--num must be at least 1, got {num}")
    if args.batch_size < 1 or args.eval_batch_size < 1:
        raise ConfigError("--batch-size and --eval-batch-size must be at least 1")
    if args.seed < 0:
        raise ConfigError(f"--seed must be non-negative, got {args.seed}")
    if args.features == "tiny" and args.inception:
        raise ConfigError("--inception is the Inception's weight file: it does not go with --features tiny")
    out = Path(args.out) if args.out else Path("reproduce") / recipe.name
    plan = Plan(recipe, num, out, recipes.files(recipe, published=args.published, inception=args.inception),
                published=args.published)
    plan.cost = recipes.cost(recipe, num)
    common = ["--device", args.device] + (["--no-progress"] if args.no_progress else [])
    if not args.published:
        s = ["sample", "--preset", recipe.model, "--pretrained"]
        if recipe.classifier:
            s += ["--classifier", recipe.classifier, "--scale", f"{recipe.scale:g}"]
        s += ["--sampler", recipe.sampler, "--steps", str(recipe.steps)]
        if recipe.upsampler:
            s += ["--upsample", recipe.upsampler, "--upsample-sampler", recipe.upsample_sampler,
                  "--upsample-steps", str(recipe.upsample_steps)]
        if _is_conditional(recipe):
            s += ["--labels", recipe.labels]
        s += ["--num", str(num), "--seed", str(args.seed), "--batch-size", str(args.batch_size),
              "--out", str(plan.samples_dir), "--dtype", args.dtype, *common]
        if args.channels_last is not None:
            s.append("--channels-last" if args.channels_last else "--no-channels-last")
        plan.sample = s + (["--compile"] if args.compile else [])
    samples = str(plan.file("samples").path) if args.published else str(plan.samples_dir)
    e = ["evaluate", str(plan.file("reference").path), samples, "--num", str(num), "--json",
         str(out / "metrics.json"), "--batch-size", str(args.eval_batch_size)]
    if args.features != "inception":
        e += ["--features", args.features]
    if args.inception:
        inc = next((f for f in plan.files if f.role == "inception"), None)
        e += ["--inception", str(inc.path) if inc else args.inception]
    plan.evaluate = e + common
    return plan


# -- printing --------------------------------------------------------------------------------------
def _num(value) -> str:
    return "-" if value is None else f"{value:.2f}"  # the README's numbers have two decimals


def format_list() -> str:
    """The rows: the paper's FID / precision / recall, settings and estimated cost."""
    from adm.hub import recipes

    rows = [("row", "FID", "prec.", "recall", "GPU-h*", "setting")]
    for r in recipes.RECIPES.values():
        est = recipes.cost(r).get("gpu_hours_estimate", {}).get("bf16/fp16")
        rows.append((r.name, _num(r.paper.get("fid")), _num(r.paper.get("precision")), _num(r.paper.get("recall")),
                     "-" if est is None else f"{est:.0f}" if est >= 10 else f"{est:.1f}",
                     f"{r.title}: {r.sampling()}"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [row[k].rjust(widths[k]) for k in range(1, 5)] + [row[5]]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 7)
    lines += ["",
              "FID, precision, recall: guided-diffusion's README (the paper's numbers); '-': not stated there, left out.",
              f"Every row: {recipes.PAPER_SAMPLES:,} samples, uniformly random classes, the official reference batch.",
              "* estimated GPU-hours on one H100 with bf16/fp16 autocast at an ASSUMED 300 TFLOP/s (docs/reproduce.md).",
              "`adm reproduce ROW --dry-run` shows a row's files, commands and cost."]
    return "\n".join(lines)


def _size(f) -> str:
    n = f.size()
    return "size unknown until downloaded" if n is None else f"{n / 2**20:,.1f} MiB"


def format_plan(plan: Plan) -> str:
    from adm.hub import cache_dir, recipes

    r = plan.recipe
    paper = ", ".join(f"{recipes.METRIC_NAMES[k]} {_paper(v)}" for k, v in r.paper.items()) or "none stated"
    lines = [f"adm reproduce {r.name}: {r.title}", f"paper: {paper}" + (f"  ({r.source})" if r.source else "")]
    if r.published_metrics:
        pm = ", ".join(f"{recipes.METRIC_NAMES[k]} {v:g}" for k, v in r.published_metrics.items())
        lines.append(f"OpenAI's published samples ({r.published}), official evaluator: {pm}")
    if plan.published:
        lines.append(f"samples: OpenAI's published batch {r.published} (no sampling)")
    else:
        nets = " + ".join(p for _, p in r.presets())
        last = plan.sample[plan.sample.index("--seed") + 1]
        labels = ("uniformly random classes, one per image drawn from its seed" if _is_conditional(r)
                  else "none (unconditional)")
        lines += [f"settings: {nets}; {r.sampling()}; labels: {labels}",
                  f"images: {plan.num:,} (seeds {last}..{int(last) + plan.num - 1}), into {plan.samples_dir}"]
    lines.append(f"reference: {r.reference} (statistics of the whole training set + 10,000 images for "
                 "precision/recall)")
    if plan.num != recipes.PAPER_SAMPLES:
        lines.append(f"NOTE: {plan.num:,} samples instead of the paper's {recipes.PAPER_SAMPLES:,}: the figures "
                     "will NOT be comparable to the paper's")
    lines.append(f"files (cache {cache_dir()}):")
    for f in plan.files:
        digest = f"sha256 {f.sha256[:16]}... (published)" if f.sha256 else "sha256 recorded at first download"
        lines.append(f"  {f.role:<10} {f.name}  [{f.status()}; {_size(f)}; {digest}]")
        lines.append(f"  {'':<10} {f.url}")
    lines.append("commands (in this order; under torchrun every process samples its share, rank 0 evaluates):")
    lines += [f"  {c}" for c in plan.commands()]
    if not plan.published:
        c = plan.cost
        calls = f"{c['unet_calls']:,} UNet calls ({c['unet_calls_per_image']} per image)"
        if c["classifier_gradients"]:
            calls += f" + {c['classifier_gradients']:,} classifier gradients"
        if c["upsampler_calls"]:
            calls += f" + {c['upsampler_calls']:,} upsampler calls ({c['upsampler_calls_per_image']} per image)"
        lines.append(f"model calls: {calls}")
        if "pflop" in c:
            h = c["gpu_hours_estimate"]
            lines.append(f"compute (estimate): {c['pflop']:,.0f} PFLOP; ~{h['bf16/fp16']:,.1f} GPU-hours with "
                         f"bf16/fp16 autocast, ~{h['fp32']:,.0f} in fp32, on one H100 at ASSUMED "
                         f"{recipes.ASSUMED_TFLOPS['bf16/fp16']:g} / {recipes.ASSUMED_TFLOPS['fp32']:g} TFLOP/s "
                         "(docs/reproduce.md)")
    lines.append(f"outputs: {plan.out / 'metrics.json'}, {plan.out / 'report.md'}, {plan.out / 'report.json'}")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


# -- running ---------------------------------------------------------------------------------------
def run_command(argv: list[str]) -> int:
    """Run one `adm` sub-command (sample or evaluate) in this process, through its own parser and function."""
    from adm.cli import evaluate, sample

    module = {"sample": sample, "evaluate": evaluate}[argv[0]]
    parser = argparse.ArgumentParser(prog="adm")
    module.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def _rank() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def run_reproduce(args: argparse.Namespace) -> int:
    if args.list:
        print(format_list())
        return 0
    if not args.row:
        from adm.hub import recipes

        raise ConfigError(f"name a row (one of {', '.join(recipes.names())}) or pass --list")
    plan = make_plan(args)
    if args.dry_run:
        print(format_plan(plan))
        return 0
    rank, world = _rank()
    main = rank == 0
    log = print if main else (lambda *a, **k: None)
    log(f"adm reproduce {plan.recipe.name}: {plan.recipe.title}")
    for f in plan.files:  # every process: downloads are locked, so one transfers while the others wait
        path = f.fetch(progress=main and not args.no_progress)
        log(f"{f.role}: {path} (verified)")
    if args.download_only:
        return 0
    writable_dir(plan.out)
    before = _existing(plan)
    if plan.sample is not None:
        log("$ adm " + shlex.join(plan.sample))
        run_command(plan.sample)
    if not main:
        return 0  # rank 0 evaluates and reports
    log("$ adm " + shlex.join(plan.evaluate))
    run_command(plan.evaluate)
    report = build_report(plan, args, before)
    write_report(plan.out, report)
    print(f"report: {plan.out / 'report.md'} and {plan.out / 'report.json'}")
    if not report["comparable"]:
        print("note: these figures are NOT comparable to the paper's: " + "; ".join(report["not_comparable"]))
    return 0


def _existing(plan: Plan) -> int:
    """Images of this run already in the samples directory (kept by the resuming sampler)."""
    if plan.sample is None:
        return 0
    seed = int(plan.sample[plan.sample.index("--seed") + 1])
    return sum((plan.samples_dir / png_name(s)).is_file() for s in range(seed, seed + plan.num))


# -- the report ------------------------------------------------------------------------------------
def build_report(plan: Plan, args: argparse.Namespace, already_there: int) -> dict:
    import torch

    import adm
    from adm.hub import recipes

    r = plan.recipe
    path = plan.out / "metrics.json"
    try:
        measured = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: the evaluation wrote no readable metrics ({e})") from None
    reasons = []
    if measured.get("num_samples") != recipes.PAPER_SAMPLES:
        reasons.append(f"{measured.get('num_samples'):,} samples instead of the paper's {recipes.PAPER_SAMPLES:,} "
                       "(FID and sFID are biased upward with fewer samples; precision/recall move too)")
    if not str(measured.get("features", "")).startswith("inception"):
        reasons.append(f"feature network {measured.get('features')!r} is not the paper's Inception-v3")
    sample_settings = None
    manifest = plan.samples_dir / "samples.json"
    if plan.sample is not None and manifest.is_file():
        sample_settings = json.loads(manifest.read_text()).get("settings")
    settings = {"model": None if plan.published else r.model, "classifier": r.classifier, "scale": r.scale,
                "sampler": r.sampler, "steps": r.steps, "upsampler": r.upsampler,
                "upsample_sampler": r.upsample_sampler if r.upsampler else None,
                "upsample_steps": r.upsample_steps if r.upsampler else None,
                "labels": ("uniformly random classes, one per image drawn from its seed" if _is_conditional(r)
                           else None),
                "num": plan.num, "seeds": None if plan.published else f"{args.seed}-{args.seed + plan.num - 1}",
                "batch_size": None if plan.published else args.batch_size, "dtype": args.dtype,
                "device": args.device, "features": args.features, "inception": args.inception,
                "samples": "OpenAI's published batch " + r.published if plan.published else str(plan.samples_dir)}
    return {
        "row": r.name, "title": r.title, "source": r.source,
        "comparable": not reasons, "not_comparable": reasons,
        "paper": dict(r.paper),
        "published_batch": ({"file": r.published, "official_evaluator": dict(r.published_metrics)}
                            if r.published else None),
        "measured": {k: measured.get(k) for k in (*recipes.METRICS, "num_samples", "num_ref", "features")},
        "notes": list(measured.get("notes") or []) + list(r.notes),
        "settings": settings, "sample_settings": sample_settings,
        "images": {"made": 0 if plan.published else plan.num - already_there,
                   "already_there": already_there},
        "files": [{"role": f.role, "name": f.name, "url": f.url, "path": str(f.path), "sha256": f.recorded_sha256()}
                  for f in plan.files],
        "commands": plan.commands(),
        "cost": None if plan.published else plan.cost,
        "versions": {"adm": adm.__version__, "torch": torch.__version__, "python": platform.python_version(),
                     "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "world_size": _rank()[1],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _paper(value) -> str:
    return "-" if value is None else f"{value:.2f}" if round(value, 2) == value else f"{value:g}"


def _measured(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_report(rep: dict) -> str:
    from adm.hub import recipes

    lines = [f"# adm reproduce {rep['row']}", "", rep["title"], ""]
    if not rep["comparable"]:
        lines += ["**These figures are NOT comparable to the paper's:** " + "; ".join(rep["not_comparable"]) + ".", ""]
    published = (rep.get("published_batch") or {}).get("official_evaluator") or {}
    head = "| metric | paper | measured | measured - paper |"
    rule = "|---|---|---|---|"
    if published:
        head += f" OpenAI's samples, official evaluator ({rep['published_batch']['file']}) |"
        rule += "---|"
    lines += [head, rule]
    for k in recipes.METRICS:
        paper, got = rep["paper"].get(k), rep["measured"].get(k)
        diff = "-" if paper is None or got is None else f"{got - paper:+.4f}"
        row = f"| {recipes.METRIC_NAMES[k]} | {_paper(paper)} | {_measured(got)} | {diff} |"
        if published:
            row += f" {'-' if published.get(k) is None else format(published[k], 'g')} |"
        lines.append(row)
    m = rep["measured"]
    lines += ["", f"Samples: {m.get('num_samples')}; reference images: {m.get('num_ref')}; "
              f"features: {m.get('features')}. Paper: {rep['source'] or 'not stated'}; '-': no figure stated "
              "(left out, not guessed).", "", "## Settings", ""]
    lines += [f"- {k}: {v}" for k, v in rep["settings"].items() if v is not None]
    lines += [f"- images made by this run: {rep['images']['made']}, already there: {rep['images']['already_there']}",
              "", "## Files", ""]
    lines += [f"- {f['role']}: `{f['name']}` sha256 `{f['sha256']}` ({f['url']})" for f in rep["files"]]
    lines += ["", "## Commands", "", "```", *rep["commands"], "```"]
    if rep["notes"]:
        lines += ["", "## Notes", "", *[f"- {n}" for n in rep["notes"]]]
    v = rep["versions"]
    lines += ["", f"adm {v['adm']}, torch {v['torch']}, Python {v['python']}, {rep['world_size']} process(es); "
              f"{rep['created']}.", ""]
    return "\n".join(lines)


def write_report(out: Path, rep: dict) -> None:
    from adm.runtime import atomic_write_bytes

    write_json_file(out / "report.json", rep)
    atomic_write_bytes(out / "report.md", format_report(rep).encode())
