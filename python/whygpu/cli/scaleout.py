"""``whygpu scaleout``: data-parallel training on P ranks under mpiexec, measured and set against the cost model."""

from __future__ import annotations

import argparse

from .._threads import _cpus_available
from ..bench.scaleout import OVERSUBSCRIBE_LIMIT
from ..bench.trust import DISTURBED
from ..predict.memory_model import ZERO_STAGE
from ..scaleout import is_sharded, quiet_reading
from ._common import (
    CliError,
    _common_args,
    _g,
    _int_list,
    _note,
    _plot_arg,
    _positive_float,
    _positive_int,
    _prepare_out,
    _progress,
    _roundtrip,
    _save,
    _table,
)


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser(
        "scaleout",
        parents=[_common_args(), _plot_arg()],
        help="data-parallel training on P MPI ranks: measured term by term, and the cost model extrapolated",
    )
    s.add_argument("--ranks", type=_int_list, default=[1, 2], help="rank counts, e.g. '1,2' (default 1,2)")
    s.add_argument(
        "--layers", type=_int_list, default=[784, 2048, 2048, 10], help="MLP widths (default 784,2048,2048,10)"
    )
    s.add_argument("--batch", type=_positive_int, default=512, help="the GLOBAL batch, split over the ranks (512)")
    s.add_argument("--steps", type=_positive_int, default=10, help="timed steps per run, after 2 warm-up (10)")
    s.add_argument("--bucket-mb", type=_positive_float, default=25.0, help="DataParallel's bucket size (25 MiB)")
    s.add_argument(
        "--sweep-max", type=_positive_int, default=64 << 20, help="largest allreduce of the sweep, bytes (64 MiB)"
    )
    s.add_argument(
        "--shard",
        choices=("none", "optimizer", "gradients", "all"),
        default="none",
        help="DataParallel's sharding: none (every rank all the state), optimizer (ZeRO-1), gradients (ZeRO-2), "
        "or all three at each P, for comparison (default none)",
    )
    s.add_argument(
        "--optimizer",
        choices=("sgd", "momentum", "adam"),
        default=None,
        help="the optimizer of every run (default adam with --shard, whose state is what sharding saves; else sgd)",
    )
    s.add_argument(
        "--prefetch",
        action="store_true",
        help="with --shard: leave each step's allgather in flight until the next forward pass needs each layer "
        "(DataParallel(prefetch=True))",
    )
    s.add_argument("--timeout", type=_positive_float, default=600.0, help="seconds allowed per mpiexec job (600)")
    s.add_argument(
        "--oversubscribe",
        action="store_true",
        help=f"allow more than {OVERSUBSCRIBE_LIMIT}x as many ranks as cores (they take turns: contention)",
    )
    s.add_argument(
        "--held-out",
        action="store_true",
        help="only the held-out validation (which every run ends with): measure the step simulator's terms apart "
        "at each P > 1, then predict each configuration (bucket layouts x shard x prefetch) BEFORE running it, and "
        "judge every term against its own measurement (writes scaleout_heldout.json)",
    )
    s.add_argument("--no-held-out", action="store_true", help="skip the held-out validation after the runs")
    s.add_argument("--quick", action="store_true", help="with --held-out: a small model, 3 steps, brief terms")
    s.add_argument("--trace", metavar="DIR", help="each held-out run's simulated and measured Chrome trace")
    s.add_argument(
        "--strategy",
        metavar="LIST",
        help="only the strategies compared on one model and global batch at the largest of --ranks: some of dp, "
        "zero1, tp, pp (e.g. dp,zero1,tp,pp); the pipeline at m = 1, 2, 4, 8 with its bubble and simulated step "
        "checked (writes scaleout_split.json)",
    )
    s.add_argument(
        "--schedule-grid",
        metavar="P,M",
        type=_int_list,
        help="print GPipe's and 1F1B's step-by-rank grids for P stages and M micro-batches, and exit",
    )
    return s


def _run_split(args) -> int:
    """``--strategy``: dp, ZeRO-1, tensor and pipeline parallel side by side (:mod:`whygpu.scaleout_split`)."""
    from ..bench.scaleout import ScaleoutError
    from ..scaleout_split import DEFAULT_LAYERS, check_strategies, print_split, run_split

    try:
        strategies = check_strategies(args.strategy)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    ranks = max(args.ranks)
    if ranks < 2:
        raise CliError("--strategy splits the model over the ranks: give --ranks 2 or more")
    layers = DEFAULT_LAYERS if args.layers == [784, 2048, 2048, 10] else tuple(args.layers)
    print(f"whygpu scaleout --strategy: {', '.join(strategies)} on {ranks} ranks; Ctrl-C ends every rank", flush=True)
    out = _prepare_out(args.out)
    try:
        doc = run_split(ranks=ranks, layers=layers, batch=args.batch, steps=args.steps, strategies=strategies,
                        timeout=args.timeout, log=_note(args))  # fmt: skip
    except (ScaleoutError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print_split(doc)
    _save(out, "scaleout_split", doc, False)
    if args.plot:
        from ..plots.split import plot_bubble, plot_strategies

        d = _roundtrip(doc)
        if doc.get("checks"):
            print(f"wrote {plot_bubble(d, out / 'scaleout_split_bubble.png')}")
        print(f"wrote {plot_strategies(d, out / 'scaleout_split_strategies.png')}")
    return 0


def _print_grids(pm: list[int]) -> int:
    from ..scaleout_split import schedule_grids

    if len(pm) != 2 or min(pm) < 1:
        raise CliError("--schedule-grid takes P,M: the stages and the micro-batches, e.g. 4,8")
    p, m = pm
    for name, text in schedule_grids(p, m).items():
        print(f"{name.upper() if name == 'gpipe' else '1F1B'}, p = {p}, m = {m} (F3: micro-batch 3's forward, "
              f"B3 its backward, . idle; one column per step of equal length)")  # fmt: skip
        print(text + "\n")
    return 0


def _run_heldout(args, optimizer: str = "sgd", quick: bool = False) -> int:
    """The held-out validation (:mod:`whygpu.scaleout_heldout`) at each P > 1 of ``args.ranks``, its
    table printed and its JSON written; ``quick``: :data:`~whygpu.scaleout_heldout.QUICK`'s model."""
    from ..bench.scaleout import ScaleoutError
    from ..scaleout_heldout import QUICK, run_heldout

    ranks = [p for p in args.ranks if p > 1]
    if not ranks:
        return 0
    layers = list(QUICK["layers"]) if quick else args.layers
    batch = QUICK["batch"] if quick else args.batch
    steps = QUICK["steps"] if quick else args.steps
    print(f"whygpu scaleout, held out: P = {', '.join(map(str, ranks))}; at each P the terms measured apart, then "
          "every configuration predicted, then run; Ctrl-C ends every rank", flush=True)  # fmt: skip
    out = _prepare_out(args.out)
    try:
        doc = run_heldout(
            ranks=ranks,
            layers=layers,
            batch=batch,
            steps=steps,
            optimizer=optimizer,
            terms_settings=dict(QUICK["terms"]) if quick else None,
            timeout=args.timeout,
            trace_dir=args.trace,
            log=_note(args),
        )
    except ScaleoutError as exc:
        raise CliError(str(exc)) from None
    print_heldout(doc)
    if args.trace:
        print(f"traces (simulated, and measured from every rank's recorded events; validated): {args.trace}")
    _save(out, "scaleout_heldout", doc, False)
    return 0


def print_heldout(doc: dict) -> None:
    """The held-out table and its counts."""
    from ..scaleout_heldout import table_rows

    p = doc["params"]
    print(f"Held-out: MLP {'-'.join(map(str, p['layers']))}, global batch {p['batch']}, {p['backend']}, "
          f"{p['optimizer']}; ms per step, medians of {p['steps']} steps; predicted from terms measured "
          "apart")  # fmt: skip
    for P, t in doc["heldout"]["terms"].items():
        print(f"P={P}: {t['how']}")
    head = ["configuration", "term", "predicted", "measured", "error", "verdict"]
    print(_table(head, table_rows(doc), right=range(2, 5)))
    sm = doc["heldout"]["summary"]
    tol = ", ".join(f"{k} {100 * v['relative']:.0f}%" + (f" or {1e3 * v['floor_s']:g} ms" if v["floor_s"] else "")
                    for k, v in doc["heldout"]["tolerances"].items())  # fmt: skip
    print(f"{sm['ok']} of {sm['configurations']} configurations within every tolerance ({tol}); "
          f"{sm['model_errors']} with model errors {sm['missed_terms'] or ''}; {sm['disturbed']} disturbed "
          "(the quiet guard measured other programs on the cores while they ran)")  # fmt: skip


def _ms(s) -> str:
    return "n/a" if s is None else f"{1e3 * s:.3g}"


def _pm(x) -> str:
    return "n/a" if x is None else f"{100 * x:+.0f}%"


def _print_scaleout(doc: dict) -> None:
    p = doc["params"]
    print(
        f"Data-parallel MLP {p['layers']}, global batch {p['batch']}, {p['backend']} back end, "
        f"{p['cores']} cores ({p.get('mpi_library') or 'MPI'}), optimizer {p.get('optimizer') or 'sgd'}"
    )
    print(f"medians over {p['steps']} steps after {p['warmup_steps']} warm-up; ms per step (min-max)")
    rows = []
    for r in doc["runs"]:
        what = f"{r['ranks']} x {r['threads']}" + (
            ", side by side" if r.get("side_by_side") else f", {r['batch']} samples" if r.get("share_of") else ""
        )
        what += f", shard {r['shard']}" if is_sharded(r) else ""
        what += ", prefetch" if is_sharded(r) and r.get("prefetch") else ""
        role = f"share of {r['share_of']} ranks" if r.get("share_of") else ("baseline" if r["ranks"] == 1 else "")
        rows.append(
            [
                what,
                f"{_ms(r['step_s'])} ({_ms(r['step_s_min'])}-{_ms(r['step_s_max'])})",
                _ms(r["compute_s"]),
                _ms(r["allreduce_s"]) if r.get("data_parallel") else "-",
                _ms(r["exposed_s"]) if r.get("data_parallel") else "-",
                f"x{_g(r['speedup_vs_1x1'])}" if r.get("speedup_vs_1x1") else "-",
                f"{_ms(r['predicted_s'])} ({_pm(r['prediction_error'])})" if r.get("predicted_s") else role,
            ]
        )
    head = ["ranks x threads", "step", "compute", "allreduce", "exposed", "vs 1x1", "model (error)"]
    print(_table(head, rows, right=range(1, 7)))
    for r in doc["runs"]:
        b = r.get("breakdown")
        if not b:
            continue
        m, x = b["model"], b["measured"]
        print(
            f"\n{r['ranks']} ranks x {r['threads']} thread(s)"
            + (f", shard={r['shard']} (ZeRO stage {ZERO_STAGE[r['shard']]})" if is_sharded(r) else "")
            + (", prefetch" if is_sharded(r) and r.get("prefetch") else "")
            + ", ms per step: measured here, and the model (its terms measured apart)"
        )
        if is_sharded(r):
            print(_table(["term", "measured", "model", "model's source"], _sharded_rows(r), right=range(1, 3)))
            print(r["lost"]["text"])
            _print_flags(r)
            continue
        rows = [
            [
                "compute (a rank, its share)",
                _ms(x["compute_s"]),
                _ms(m["compute_s"]),
                "the ranks side by side, no communication"
                if r["model"]["compute_from"] == "side by side"
                else "one rank alone on its share"
                + (f" x{r['model']['stretch']:.2g} (ranks take turns)" if r["model"]["stretch"] > 1 else ""),
            ],
            ["allreduce", _ms(x["allreduce_s"]), _ms(m["comm_s"]), "simulated from the bare Allreduce, same ranks"],
            ["exposed allreduce", _ms(x["exposed_s"]), _ms(m["exposed_s"]), "simulated: the schedule, not this run"],
            ["step", _ms(x["step_s"]), _ms(m["step_s"]), f"model error {_pm(r['prediction_error'])}"],
        ]
        print(_table(["term", "measured", "model", "model's source"], rows, right=range(1, 3)))
        print(r["lost"]["text"])
        _print_flags(r)
    f, s = doc["fit"], doc["summary"]
    print(
        f"\nallreduce sweep on {f['ranks']} ranks ({len(doc['sweep']['bytes'])} sizes, 1 KB to "
        f"{doc['sweep']['bytes'][-1] / 2**20:.3g} MiB): alpha = {1e6 * f['alpha_s']:.3g} us, "
        f"B = {f['bandwidth_Bps'] / 1e9:.3g} GB/s (rms error of the fit {100 * f['rms_rel_error']:.0f}%)"
    )
    dp = [r for r in doc["runs"] if r["ranks"] > 1 and r.get("data_parallel") and not is_sharded(r)]
    if dp:
        r = dp[-1]
        print(
            f"DataParallel's allreduce of {r['bytes'] / 1e6:.3g} MB in {r['buckets']} bucket(s): "
            f"{_ms(r['allreduce_s'])} ms in flight vs a bare Allreduce {_ms(r['bare_allreduce_s'])} ms "
            f"(x{_g(s.get('dp_over_bare_bandwidth'))} of its bandwidth; the fit gives "
            f"{_ms(s.get('fit_at_gradient_s'))} ms); exposed / allreduce "
            f"{_g(s.get('exposed_over_allreduce'))}; weights identical on all ranks (SHA-256 of the bytes): "
            f"{r.get('weights_identical') is True}"
        )
    m = doc["model"]
    print(f"model: {m['formula']}; {m['terms']}")
    ex = doc.get("extrapolation") or {}
    if ex:
        print(f"\nModel, strong scaling (global batch {ex['batch']}): scaling efficiency; {ex['compute_note']}:")
        marks = [P for P in (2, 8, 64, 512) if P in ex["ranks"]]
        rows = []
        for c in ex["curves"]:
            if c["scaling"] != "strong":
                continue
            eff = dict(zip(c["ranks"], c["efficiency"]))
            rows.append([c["system"], c["model"]] + [f"{100 * eff[P]:.0f}%" if P in eff else "-" for P in marks])
        print(
            _table(
                ["system (model)", "network trained"] + [f"P={P}" for P in marks], rows, right=range(2, 2 + len(marks))
            )
        )
        print(
            "(all rows are the model; the systems other than this machine use public figures, not measured here; "
            "'-': past this machine's cores, or more ranks than samples)"
        )
    _print_memory(doc)
    print(quiet_reading(doc))


def _print_flags(r: dict) -> None:
    if r.get("remeasured"):
        f = r["remeasured"]
        print(f"measured twice: the first try ({'; '.join(f['reasons'])}) was {_ms(f['step_s'])} ms per step")
    if r.get("disturbed"):
        print(f"DISTURBED: {'; '.join(r['disturbed'])} again when measured a second time: {DISTURBED}")


def _sharded_rows(r: dict) -> list[list[str]]:
    """The sharded step's terms, measured and simulated (whygpu.scaleout.check_run)."""
    m, x, P = r["breakdown"]["model"], r["breakdown"]["measured"], r["ranks"]
    return [
        ["compute (a rank, its share)", _ms(x["compute_s"]), _ms(m["compute_s"]), "side by side, less its update"],
        ["reduce-scatter", _ms(x["reduce_scatter_s"]), _ms(m["reduce_scatter_s"]), "bare Reduce_scatter, same ranks"],
        ["exposed reduce-scatter", _ms(x["exposed_s"]), _ms(m["exposed_s"]), "simulated: the schedule, not this run"],
        ["update (its 1/P shard)", _ms(x["update_s"]), _ms(m["update_s"]), f"the whole update side by side / {P}"],
        ["allgather", _ms(x["allgather_s"]), _ms(m["allgather_s"]), "bare Allgather, same ranks"],
        *(
            [
                [
                    "exposed allgather",
                    _ms(x.get("exposed_allgather_s")),
                    _ms(m.get("exposed_allgather_s")),
                    "simulated: the next forward pass's waits (prefetch)",
                ]
            ]
            if r.get("prefetch")
            else []
        ),
        ["step", _ms(x["step_s"]), _ms(m["step_s"]), f"model error {_pm(r['prediction_error'])}"],
    ]


def _print_memory(doc: dict) -> None:
    """Per-rank bytes measured next to the formula, and the devices public models need."""
    mem = doc.get("memory")
    if not mem:
        return
    print(
        f"\nMemory per rank, MB (1 MB = 1e6 bytes), {mem['n_params']:,} parameters, {mem['precision']} "
        f"{mem['optimizer']}: measured (the largest rank) / formula"
    )
    from ..predict.memory_model import MEMORY_HEAD, memory_rows

    rows, head = memory_rows(mem), list(MEMORY_HEAD)
    print(_table(head, rows, right=range(2, 7)))
    print(mem["note"])
    ex = mem["extrapolation"]
    print(
        f"\nModel: devices needed just to hold the training state (parameters, gradients, {ex['optimizer']}'s "
        f"state) of public-size models; not counted: {ex['not_counted']}, so these are lower bounds; "
        "'-': never, the unsharded part alone exceeds a device"
    )
    rows = []
    for row in ex["rows"]:
        cells = []
        for st in ex["stages"]:
            d = row[st]["devices"]
            cells.append("-" if d is None else str(d))
        rows.append([row["model"], row["precision"], row["device"], *cells])
    stages = [f"{st} ({ex['zero_stage'][st]})" for st in ex["stages"]]
    print(_table(["model", "precision", "device", *stages], rows, right=range(3, 3 + len(stages))))
    print(ex["source"])


def run(args) -> int:
    from ..bench.scaleout import INSTALL_HINT, ScaleoutError, check_ranks, check_shards, job_count, mpi_status
    from ..scaleout import run_scaleout

    if args.schedule_grid:
        return _print_grids(args.schedule_grid)
    if len(args.layers) < 2:
        raise CliError("--layers needs at least an input and an output width")
    if args.strategy and (args.held_out or args.quick or args.trace):
        raise CliError("--strategy runs on its own: not with --held-out, --quick or --trace")
    if args.quick and not args.held_out:
        raise CliError("--quick goes with --held-out")
    if args.held_out and args.no_held_out:
        raise CliError("--held-out and --no-held-out contradict each other")
    if args.trace and args.no_held_out:
        raise CliError("--trace writes the held-out runs' timelines: it cannot go with --no-held-out")
    try:  # refused before anything starts, MPI or not
        check_ranks(args.ranks, args.batch, _cpus_available(), args.oversubscribe)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    st = mpi_status()
    if not st["available"]:
        raise CliError(f"scaleout needs mpi4py and mpiexec: {st['reason']}; install them with {INSTALL_HINT}")
    if args.held_out:
        return _run_heldout(args, args.optimizer or "sgd", args.quick)
    if args.strategy:
        return _run_split(args)
    out = _prepare_out(args.out)
    shards = check_shards(args.shard)
    if args.prefetch and shards == ["none"]:
        raise CliError("--prefetch needs --shard optimizer, gradients or all: unsharded, there is no allgather to "
                       "prefetch")  # fmt: skip
    optimizer = args.optimizer or ("sgd" if shards == ["none"] else "adam")
    each = "" if len(shards) == 1 else f", and P ranks with each of shard={', '.join(shards)}"
    jobs = job_count(args.ranks, args.batch, shards)  # what measure launches and its progress bar counts to
    print(
        f"whygpu scaleout: {jobs} MPI jobs on up to {max(args.ranks)} ranks (baselines; each P with one "
        f"rank alone and P ranks side by side on their shares{each}; an allreduce sweep); {optimizer}; "
        "Ctrl-C ends every rank",
        flush=True,
    )
    try:
        doc = run_scaleout(
            ranks=args.ranks,
            layers=args.layers,
            batch=args.batch,
            steps=args.steps,
            sweep_max=args.sweep_max,
            bucket_mb=args.bucket_mb,
            timeout=args.timeout,
            log=_note(args),
            progress=_progress(args),
            oversubscribe=args.oversubscribe,
            shards=shards,
            optimizer=optimizer,
            prefetch=args.prefetch,
        )
    except ScaleoutError as exc:
        raise CliError(str(exc)) from None
    _print_scaleout(doc)
    _save(out, "scaleout", doc, False)
    if args.plot:
        from ..plots.scaleout import plot_scaleout

        print(f"wrote {plot_scaleout(_roundtrip(doc), out / 'scaleout.png')}")
    if args.no_held_out:
        return 0
    return _run_heldout(args, optimizer)
