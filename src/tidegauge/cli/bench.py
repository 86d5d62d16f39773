"""``tidegauge bench``: the windowed-aggregation benchmark against peer references, in one command."""

from __future__ import annotations

from typing import Annotated

import typer

from tidegauge.cli import app


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(
    ctx: typer.Context,
    peers: Annotated[str, typer.Option(help="Folder of the peer reference scripts.",
                                       envvar="TIDEGAUGE_PEERS_DIR", show_envvar=True)] = "../shared/bench/peers",
) -> None:
    """Throughput (readings/s) and memory of windowed aggregation vs peers; extra options: --reps N,
    --workload sparse|dense|all, --memory, --out FILE."""
    from tidegauge.benchmarking.windows import main

    main(["--peers", peers, *ctx.args])
