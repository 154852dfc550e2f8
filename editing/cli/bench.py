"""``attnprobe bench``: PIE-Bench for every editing method (``editing.bench``).

attnprobe bench toy runs/toy_pie --world v2 --per-type 5
attnprobe bench run runs/toy_pie --model toy-v2 --out runs/bench --method fpe p2p
attnprobe bench table runs/bench
torchrun --nproc_per_node 2 --no-python attnprobe bench run ...   # shards by RANK/WORLD_SIZE

Sharded, every shard writes its own rows file; they meet (:class:`probe.shards.ShardGroup`)
and shard 0 writes the tables of them all.
"""

from __future__ import annotations

import argparse

from probe.cli.args import add_model_arg, add_shard_arg, default_model, loading_options


def _cmd_toy(args: argparse.Namespace) -> int:
    from editing.bench.toy_pie import write_toy_pie_bench

    path = write_toy_pie_bench(args.out, args.per_type, args.world, args.size, args.seed)
    print(f"toy PIE-Bench ({args.per_type} items x 3 edit types): {path}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from editing.bench.pie_models import PieScorer
    from editing.bench.run import bench_jobs, run_bench
    from editing.bench.tables import write_tables
    from probe.models import load_pipeline
    from probe.shards import ShardGroup

    bench_jobs(args.method, args.inversion)  # refuse a bad name before loading anything
    scorer = PieScorer(args.dino, args.clip, args.lpips, args.structure_scale)
    pipe = load_pipeline(args.model or default_model(), **loading_options(args))
    with ShardGroup.launched(args.shard, args.out) as group:
        rows = run_bench(pipe, args.data, args.out, args.method, args.inversion, scorer,
                         types=args.types, limit=args.limit, seed=args.seed,
                         num_steps=args.num_steps, shard=(group.index, group.count))  # fmt: skip
        group.barrier(f"bench-{_plan_tag(args)}")  # the table waits for every shard's rows
    for name, why in scorer.missing.items():
        print(f"{name}: missing ({why})")
    if not group.main:
        print(f"rows (shard {group.index}/{group.count}): {rows}")
        return 0
    _, table = write_tables(args.out)
    print(f"rows: {rows}\ntables: {table}")
    return 0


def _plan_tag(args: argparse.Namespace) -> str:
    """What the run's shards edit, hashed: the name of their barrier in ``--out``."""
    from probe.shards import plan_tag

    plan = [args.method, args.inversion, args.types, args.limit, args.seed, args.num_steps]
    return plan_tag(plan)


def _cmd_table(args: argparse.Namespace) -> int:
    from editing.bench.tables import write_tables

    print(write_tables(args.out)[1].read_text())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` (``toy``, ``run``, ``table``) to the ``attnprobe`` command line."""
    p = sub.add_parser("bench", help="PIE-Bench: every editing method x inversion, one table")
    steps = p.add_subparsers(dest="bench_command", metavar="STEP", required=True)

    t = steps.add_parser("toy", help="write a toy PIE-Bench from the toy world's renders")
    t.add_argument("out", help="folder to write (mapping_file.json, annotation_images/)")
    t.add_argument("--per-type", type=int, default=5, help="items per edit type (3 types)")
    t.add_argument("--world", default="v2", help="toy world: v2 (toy-v2, toy-flux) or v1 (toy)")
    t.add_argument("--size", type=int, default=64, help="image side in pixels")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_cmd_toy)

    r = steps.add_parser("run", help="edit and score every item; resumable")
    r.add_argument("data", help="a PIE-Bench folder (mapping_file.json, annotation_images/)")
    add_model_arg(r, device=True)
    r.add_argument("--out", default="runs/bench", help="run folder (rows.jsonl, images/, tables)")
    r.add_argument("--method", nargs="+", default=["fpe"], help="edit methods (fpe p2p ...)")
    r.add_argument(
        "--inversion", nargs="+", default=["ddim"],
        help="ddim / direct / null-text on UNets; euler / rf-inversion / rf-solver / fireflow "
        "on flows",
    )  # fmt: skip
    r.add_argument("--types", nargs="+", help="editing_type_id values to run (default all)")
    r.add_argument("--limit", type=int, help="only the first N items (of those types)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--num-steps", type=int, help="inversion and edit steps (default: the model's)")
    add_shard_arg(r, "run every N-th edit from I into rows.I-of-N.jsonl",
                  "shard 0 writes the tables when all are done")  # fmt: skip
    r.add_argument("--dino", help="DINO ViT-B/8 folder (structure distance); else missing")
    r.add_argument("--clip", help="CLIP ViT-L/14 folder (CLIP scores); else missing")
    r.add_argument(
        "--lpips", help="folder with squeezenet1_1.pth and squeeze.pth (LPIPS); else missing"
    )
    r.add_argument(
        "--structure-scale", choices=("reference", "unit"), default="reference",
        help="reference: 0-255 pixels into DINO as the published protocol; unit: /255 first",
    )  # fmt: skip
    r.set_defaults(func=_cmd_run)

    s = steps.add_parser("table", help="rewrite a run's tables.json / tables.md and print them")
    s.add_argument("out", help="the run folder")
    s.set_defaults(func=_cmd_table)
