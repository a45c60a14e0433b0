"""``autoq trace FILE [--list|--summary] [--export csv|json -o OUT]``: inspect and export a measurement trace.

Damaged records (they fail their checksums) are left out of the listing, summary and export, which go on with the
good ones; the command then names them and exits with status 2. In --list, ``run`` is a search's attempt and
episode (``a3:e-1`` is attempt 3's start-up), ``*`` marking a record a replay skips (superseded by a resume)."""
from __future__ import annotations

import argparse
import os
import sys
import time

from autoq.common.errors import AutoQError
from autoq.host.cli._args import output_file_or_stdout


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trace", help="list, summarise or export a measurement trace (.sqlite)", description=__doc__.split(": ", 1)[1]
    )
    parser.add_argument("file", help="trace file written by --record")
    show = parser.add_mutually_exclusive_group()
    show.add_argument("--list", action="store_true", help="one line per recorded measurement")
    show.add_argument("--summary", action="store_true", help="counts, sources, backends and ranges (the default)")
    show.add_argument("--export", choices=("csv", "json"), help="write the whole trace as CSV or self-contained JSON")
    parser.add_argument("-o", "--output", type=output_file_or_stdout, help="where --export writes ('-' for stdout)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from autoq.host.traces import TraceError, TraceStore, damaged_message

    if args.output and not args.export:
        raise AutoQError("-o/--output is only used with --export")
    if args.export and not args.output:
        raise AutoQError(f"--export {args.export} needs -o OUT (or -o - for stdout)")
    damaged: list = []
    with TraceStore(args.file, mode="r") as store:
        if args.export:
            export(store, args.export, args.output, damaged)
        elif args.list:
            try:
                print_list(store, damaged)
            except BrokenPipeError:  # `autoq trace FILE --list | head`: the reader has seen enough
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
        else:
            damaged.extend(print_summary(store))
    if damaged:
        raise TraceError(f"{damaged_message(args.file, damaged)}; the other records were " +
                         ("exported" if args.export else "listed" if args.list else "summarised"))
    return 0


def export(store, fmt: str, output: str, damaged: list) -> None:
    from autoq.common.fileio import atomic_write_text
    from autoq.host.traces import export_trace

    text = export_trace(store, fmt, damaged)
    if output == "-":
        sys.stdout.write(text)
    else:
        try:
            atomic_write_text(output, text)
        except OSError as exc:
            raise AutoQError(f"cannot write {output}: {exc.strerror}") from exc
        print(f"wrote {len(store) - len(damaged)} records to {output}", file=sys.stderr)


def print_list(store, damaged: list) -> None:
    print(f"{'id':>5}  {'recorded (UTC)':19}  {'network':12} {'plan':16} {'batch':>5}  {'run':>10}  {'source':8} "
          f"{'latency ms':>11} {'energy mJ':>10} {'power W':>8} {'w bits':>6} {'a bits':>6}  backend")
    for r in store.records(damaged=damaged):
        m = r.measurement
        run = "-" if r.episode is None else ("*" if r.superseded else "") + f"a{r.attempt}:e{r.episode}"
        print(
            f"{r.id:>5}  {_utc(r.recorded_at):19}  {r.network.name[:12]:12} {r.plan.hash:16} {r.batch:>5}  {run:>10}  "
            f"{m.provenance.source:8} {m.latency_s * 1e3:>11.4f} {m.energy_j * 1e3:>10.4f} {m.avg_power_w:>8.3f} "
            f"{r.plan.average_weight_bits(r.network):>6.2f} {r.plan.average_act_bits():>6.2f}  {r.backend_uri}"
        )


def print_summary(store) -> tuple:
    """Print the summary; returns the damaged records."""
    s = store.summary()
    print(f"trace {s.path} (schema {s.schema_version}, created {_utc(s.created_at)} UTC)")
    print(f"  records: {s.records}, distinct plans: {s.distinct_plans}")
    for net_hash, (name, count) in s.networks.items():
        print(f"  network {name} ({net_hash}): {count} records")
    for source, count in sorted(s.sources.items()):
        print(f"  source {source}: {count}")
    for uri, count in sorted(s.backends.items()):
        print(f"  backend {uri}: {count}")
    if s.records:
        print(f"  latency: {s.latency_s_range[0] * 1e3:.4f} .. {s.latency_s_range[1] * 1e3:.4f} ms")
        print(f"  energy:  {s.energy_j_range[0] * 1e3:.4f} .. {s.energy_j_range[1] * 1e3:.4f} mJ")
        print(f"  recorded {_utc(s.first_recorded_at)} .. {_utc(s.last_recorded_at)} UTC")
    if s.superseded:
        print(f"  superseded by a --resume (a replay skips them): {s.superseded}")
    if s.damaged:
        print(f"  damaged (fail their checksums, left out): {len(s.damaged)}, ids {', '.join(str(d.id) for d in s.damaged)}")
    return s.damaged


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
