"""The performance benchmark (``ppa-bench``): speed and memory ratios of the PPA step, the
federation, evaluation, uploads, many sites and raw throughput, measured side by side in one
run. Results: docs/benchmarks.md.

Why under `client/`: the benchmark's subject is a site's work. It times the training step a
site runs, calls `client.site.SiteTrainer` directly to compare with the same sites inside a
Flower simulation, and measures what a site uploads; whole federations it runs only as
`ppa-simulate` subprocesses and reads their output files. It imports `client` and `ppa` (with
`ppa.launch`) and nothing from `server/`, so it cannot live in `ppa/` (which imports neither
`client` nor Flower) and adds no dependency between `server/` and `client/`.

Modules, dependencies pointing down the list:

- `cli`: the command line, runs the chosen benchmarks and records them;
- `cases/`: one module per benchmark (ppa_step_ratio, federation_overhead, eval_speedup,
  upload_ratio, sites_scaling, throughput);
- `report`: table rows, bench.json, the markdown table, the docs section;
- `simulations`: synthetic sets, one simulation launch with its process tree's memory;
- `workloads`: synthetic batches, models, step contexts, one training step;
- `timing`: samples, interleaved repeats, ratios;
- `context`: the composed config and folders, the machine and its load.
"""
