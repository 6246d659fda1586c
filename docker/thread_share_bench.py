"""Training images/s of N site processes side by side on this host, at a given torch thread
count: whether sites that share a host's cores should each size torch's pool by all cores
(torch's default) or by their share (ppa/cpu_threads.py). docker/README.md reports it.

    .venv/bin/python docker/thread_share_bench.py --sites 6 --threads 0   # torch's default
    .venv/bin/python docker/thread_share_bench.py --sites 6 --threads 1   # the share, 2 cores

Each process trains the configured model (default: the demo's tiny ResNet at 128 x 64,
batch 16) on random images for `--seconds` after one warm-up step, and reports images/s
and CPU milliseconds per image (all threads: spin-waiting at barriers counts, whatever else
the host runs); the processes start together.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time


def _site(threads: int, model: str, height: int, width: int, batch: int, seconds: float, q):
    import torch

    from ppa.config import load_config
    from ppa.model import create_model

    if threads > 0:
        torch.set_num_threads(threads)
    cfg = load_config([f"model={model}"])
    net = create_model(cfg.model, 32)
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    images = torch.randn(batch, 3, height, width)
    labels = torch.randint(0, 32, (batch,))
    modality = torch.zeros(batch, dtype=torch.long)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(net(images, modality).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    q.put(("ready", None))
    start, cpu_start, seen = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - start < seconds:
        step()
        seen += batch
    rate = seen / (time.perf_counter() - start)
    # CPU seconds (all threads) per image: spin-waiting at OpenMP barriers shows up here,
    # whatever else the host runs.
    cpu_per_image = (time.process_time() - cpu_start) / seen
    q.put(
        ("done", {"threads": torch.get_num_threads(), "images_per_s": rate, "cpu": cpu_per_image})
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(
            target=_site,
            args=(args.threads, args.model, args.height, args.width, args.batch, args.seconds, q),
        )
        for _ in range(args.sites)
    ]
    for p in procs:
        p.start()
    results = []
    while len(results) < args.sites:
        kind, value = q.get()
        if kind == "done":
            results.append(value)
    for p in procs:
        p.join()
    rates = [r["images_per_s"] for r in results]
    print(
        json.dumps(
            {
                "sites": args.sites,
                "threads_per_site": results[0]["threads"],
                "images_per_s_per_site": round(sum(rates) / len(rates), 2),
                "images_per_s_total": round(sum(rates), 2),
                "cpu_ms_per_image": round(1000 * sum(r["cpu"] for r in results) / len(results), 1),
            }
        )
    )


if __name__ == "__main__":
    main()
