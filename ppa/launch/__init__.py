"""Launching the Flower app on this machine: processes, the SuperLink session, the simulation
runtime and the deployment engine, driven through Flower's executables and ``flwr`` CLI as
subprocesses.

Why under `ppa/`: this package imports no Flower module (it starts ``flower-superlink``,
``flower-supernode`` and ``flwr`` as programs and reads their JSON answers), so the rule that
`ppa/` imports neither Flower nor Prometheus holds, and both the command lines (`ppa.cli`)
and the benchmark (`client.bench`) can use it without depending on `server/`.

Modules, each one concern, dependencies pointing down the list:

- `proctree`: the process tree below a pid, from /proc;
- `processes`: `ManagedProcess` (own process group, log file, stopped by PID with its
  descendants), orphan adoption, free ports, the /health probe;
- `flower_config`: run-config TOML, ``k=v`` config strings, anchored paths;
- `settings`: `LaunchSettings`, `RunResult`, the Flower processes' environment;
- `session`: `SuperLinkSession`, a SuperLink of our own and the runs on it;
- `command_line`: the launchers' shared options, exit codes and `supervise`;
- `sites`, `deployment`: the deployment's sites (`ppa.node_config.SiteSpec`) and the
  SuperLink + SuperNodes on loopback; `simulation`: the simulation runtime.
"""
