"""Run a Flower App on a throwaway local deployment: one SuperLink and N SuperNodes on 127.0.0.1.

It drives Flower's own executables (``flower-superlink``, ``flower-supernode``, ``flwr run``) and
never imports ``flwr``. Everything binds to loopback on free ports, lives in a temporary directory
(its own ``FLWR_HOME`` per process, so ``~/.flwr`` is never touched) and is stopped at the end,
including the processes Flower spawns itself (SuperExec, ``flwr-serverapp``, ``flwr-clientapp``).
A SuperNode killed during the run (a test killing a node for real) leaves its SuperExec and
ClientApp orphaned, outside the process tree: the launcher records every process of the tree while
the run goes on, so those are stopped too, and reaps dead children at once so that Flower's
parent-process monitors notice them.

Usage::

    python -m secagg.adapters.flower_launcher examples/flower_app --nodes 4 \\
        --node-config 3:drop-at=mask --run-config secagg-num-nodes=4

The app must declare ``secagg-result-path`` in its run config; the launcher points it at a file in
the temporary directory and returns that file's JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["LocalRun", "run_local", "free_ports", "main"]

_CONNECTION = "secagg-local"
_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LocalRun:
    """What a local run produced: the app's result JSON, the wall time and where the logs were."""

    result: Any
    seconds: float
    workdir: Path
    exited: dict[str, int] = field(default_factory=dict)
    """Processes the launcher started (``superlink``, ``node<i>``) that had exited before the run
    ended, with their return codes (``-9``: SIGKILL); ``flwr run`` itself is not listed."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (held open until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise ValueError(f"config values must be bool, int, finite float or str, got {value!r}")


def _toml_pairs(config: Mapping[str, Any]) -> str:
    return "\n".join(f"{key} = {_toml_value(value)}" for key, value in config.items()) + "\n"


def _executable(bin_dir: Path, name: str) -> str:
    candidate = bin_dir / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH: install flwr")
    return found


# -- process bookkeeping: stop what we started and everything it spawned ---------------------------------
def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def _descendants(roots: Sequence[int]) -> dict[int, int]:
    """Every live process under ``roots`` (inclusive), as pid -> start time."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _stat(int(entry.name))) is not None:
            children.setdefault(info[0], []).append(int(entry.name))
            starts[int(entry.name)] = info[1]
    found: dict[int, int] = {}
    stack = [pid for pid in roots if pid in starts]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found[pid] = starts[pid]
            stack.extend(children.get(pid, ()))
    return found


def _alive(pid: int, start: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` (not a recycled pid)."""
    info = _stat(pid)
    return info is not None and info[1] == start


def _signal(pid: int, start: int, signum: int) -> None:
    if _alive(pid, start):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _record_tree(processes: Sequence[subprocess.Popen[bytes]], seen: dict[int, int]) -> None:
    """Add every process under ours, and under those already seen (orphans included), to ``seen``."""
    roots = [p.pid for p in processes] + [pid for pid, start in seen.items() if _alive(pid, start)]
    seen.update(_descendants(roots))


def _stop(processes: Sequence[subprocess.Popen[bytes]], seen: Mapping[int, int] | None = None) -> None:
    """Freeze the whole tree and every process ``seen`` in it that still lives (so nothing spawns
    meanwhile), then kill them all and reap our children."""
    frozen: dict[int, int] = {}
    for pid, start in (seen or {}).items():
        if _alive(pid, start):
            _signal(pid, start, signal.SIGSTOP)
            frozen[pid] = start
    for _ in range(10):
        tree = _descendants([p.pid for p in processes] + list(frozen))
        new = {pid: start for pid, start in tree.items() if pid not in frozen}
        if not new:
            break
        for pid, start in new.items():
            _signal(pid, start, signal.SIGSTOP)
        frozen.update(new)
    for pid, start in frozen.items():
        _signal(pid, start, signal.SIGKILL)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_healthy(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError("flower-superlink did not become healthy in time")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- the run -----------------------------------------------------------------------------------------
def run_local(
    app_dir: str | Path,
    node_configs: Sequence[Mapping[str, Any]],
    run_config: Mapping[str, Any] | None = None,
    *,
    timeout: float = 120.0,
    keep_workdir: bool = False,
    result_key: str = "secagg-result-path",
) -> LocalRun:
    """Start a SuperLink and one SuperNode per entry of ``node_configs``, run the app, stop all.

    Each node also gets ``secagg-state-dir`` pointing at its own private directory.
    Raises:
        TimeoutError: the run did not finish within ``timeout`` seconds (everything is stopped).
        RuntimeError: the app finished without writing its result (log tails in the message).
    """
    start = time.monotonic()
    deadline = start + timeout
    bin_dir = Path(sys.executable).parent
    workdir = Path(tempfile.mkdtemp(prefix="secagg-flower-"))
    result_path = workdir / "result.json"
    ports = free_ports(1 + len(node_configs))
    link = f"127.0.0.1:{ports[0]}"
    base_env = dict(os.environ)
    base_env.update({
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.5",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    })

    def environment(name: str) -> dict[str, str]:
        home = workdir / name / "flwr-home"
        home.mkdir(parents=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{_CONNECTION}"\n\n[superlink.{_CONNECTION}]\n'
            f'address = "{link}"\ninsecure = true\n'
        )
        return base_env | {"FLWR_HOME": str(home)}

    def spawn(name: str, command: list[str]) -> subprocess.Popen[bytes]:
        log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        with log:
            process = subprocess.Popen(command, cwd=workdir, env=environment(name), stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        processes.append(process)
        names[process.pid] = name
        return process

    processes: list[subprocess.Popen[bytes]] = []
    names: dict[int, str] = {}
    seen: dict[int, int] = {}  # every process of the tree so far: pid -> start time
    try:
        superlink = spawn("superlink", [
            _executable(bin_dir, "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(ports[0]),
            "--disable-runtime-dependency-installation",
        ])
        _wait_healthy(ports[0], superlink, min(deadline, time.monotonic() + 30))
        for index, config in enumerate(node_configs):
            state = workdir / f"node{index}" / "secagg-state"
            pairs = dict(config) | {"secagg-state-dir": str(state)}
            spawn(f"node{index}", [
                _executable(bin_dir, "flower-supernode"), "--insecure", "--superlink", link,
                "--port", str(ports[1 + index]),
                "--node-config", " ".join(f"{k}={_toml_value(v)}" for k, v in pairs.items()),
            ])
        overrides = workdir / "run-config.toml"
        overrides.write_text(_toml_pairs(dict(run_config or {}) | {result_key: str(result_path)}))
        runner = spawn("flwr-run", [
            _executable(bin_dir, "flwr"), "run", str(Path(app_dir).resolve()), _CONNECTION, "--stream",
            "--run-config", str(overrides),
        ])
        while runner.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Flower run did not finish in {timeout:g}s; log tail:\n"
                                   f"{_tail(workdir / 'flwr-run.log')}")
            _record_tree(processes, seen)
            for process in processes:
                process.poll()  # reap a killed SuperNode, so its SuperExec's parent monitor sees it gone
            time.sleep(0.25)
        grace = min(deadline, time.monotonic() + 10.0)  # the log stream can end before the app's last write
        while not result_path.exists() and time.monotonic() < grace:
            time.sleep(0.2)
        if not result_path.exists():
            raise RuntimeError(f"the app wrote no result (flwr run exited {runner.returncode}); log tail:\n"
                               f"{_tail(workdir / 'flwr-run.log')}")
        exited = {names[p.pid]: p.returncode for p in processes if p.poll() is not None and p is not runner}
        return LocalRun(json.loads(result_path.read_text()), time.monotonic() - start, workdir, exited)
    finally:
        _stop(processes, seen)
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _parse_pairs(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(raw.lower() if raw.lower() in ("true", "false") else raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run an app on N local SuperNodes and print its result JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app_dir", help="the Flower App folder (with pyproject.toml)")
    parser.add_argument("--nodes", type=int, default=4, help="number of SuperNodes (partition-id 0..N-1)")
    parser.add_argument("--node-config", action="append", default=[], metavar="I:KEY=VALUE",
                        help="extra node config for node I, e.g. 3:drop-at=mask (repeatable)")
    parser.add_argument("--run-config", action="append", default=[], metavar="KEY=VALUE",
                        help="run config override, e.g. secagg-stage-timeout=20 (repeatable)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before everything is stopped")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory with the logs")
    args = parser.parse_args(argv)
    nodes: list[dict[str, Any]] = [{"partition-id": i, "num-partitions": args.nodes} for i in range(args.nodes)]
    for item in args.node_config:
        index, _, pair = item.partition(":")
        nodes[int(index)].update(_parse_pairs([pair]))
    run_config = {"secagg-num-nodes": args.nodes} | _parse_pairs(args.run_config)
    outcome = run_local(args.app_dir, nodes, run_config, timeout=args.timeout, keep_workdir=args.keep)
    print(json.dumps({"seconds": round(outcome.seconds, 1), "result": outcome.result}, indent=1))
    if args.keep:
        print(f"logs in {outcome.workdir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
