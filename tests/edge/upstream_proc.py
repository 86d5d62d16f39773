"""An upstream tidegauge server for the edge tests, as its own process.

``python tests/edge/upstream_proc.py DIR PORT TOKEN [WEBHOOK_URL]``: every default edge stream goes through
its own HTTP intake source into a transactional JSONL sink (``DIR/out/<stream>/part-*.jsonl``), with
checkpoints every second; alerts to page are POSTed to ``WEBHOOK_URL``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s upstream %(levelname)s %(name)s: %(message)s")
    from tidegauge.alerting import WebhookNotifier
    from tidegauge.connectors.files import FileSink
    from tidegauge.dataflow import CheckpointConfig, Flow, Runner, WatermarkConfig
    from tidegauge.edge.receiver import EdgeReceiver, NotifierPager, edge_sources
    from tidegauge.server import serve
    from tidegauge.server.config import RateLimitConfig, ServerConfig, TokenConfig, hash_token

    root, port, token = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    webhook = sys.argv[4] if len(sys.argv) > 4 else None
    sources = edge_sources(root / "intake", durability="os")
    flow = Flow("upstream", watermark=WatermarkConfig.of(max_delay="2s", idle_timeout="2s"))
    for stream, src in sources.items():
        stream_of = flow.source(src, key=src.key, time=src.time, partition_by="edge_node")
        stream_of.sink(FileSink(f"{root}/out/{stream}/", format="jsonl"), name=f"out_{stream}")
    runner = Runner(flow, checkpoint=CheckpointConfig(root / "checkpoints", interval="1s"), max_delay="20ms")
    pager = NotifierPager([WebhookNotifier("test", webhook)]) if webhook else None
    receiver = EdgeReceiver(sources, root / "edge.db", pager=pager)
    config = ServerConfig(host="127.0.0.1", port=port, max_body_bytes="64MiB",
                          rate_limit=RateLimitConfig(requests_per_s=10000, burst=10000),
                          tokens=[TokenConfig(name="agents", hash=hash_token(token), scopes=["ingest", "read"])])
    asyncio.run(serve(runner, config, edge_receiver=receiver))


if __name__ == "__main__":
    main()
