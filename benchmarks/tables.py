"""Plain-text tables of the ``secagg bench`` sections (one function per section)."""

from __future__ import annotations

from typing import Any, Callable

Row = dict[str, Any]


def _table(title: str, head: list[str], rows: list[list[str]], notes: list[str] | None = None) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) for c, w in zip(cells, widths))

    out = [title, line(head), "-" * len(line(head)), *(line(r) for r in rows), *(notes or [])]
    return "\n".join(out)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3g}x"


def client_masking(rows: list[Row]) -> str:
    return _table(
        "client masking (ms, median): ours = mask_input; stage = our whole masked-input step once; bound = k "
        "AES-CTR streams + k uint32 adds + quantisation; flower = flwr's quantize + pseudo_rand_gen + parameters_*",
        ["d", "k", "ours", "stage", "bound", "flower", "ours/bound", "ours/flower"],
        [[f"{r['dim']:,}", str(r["k"]), _ms(r["ours_s"]), _ms(r["stage_s"]), _ms(r["bound_s"]), _ms(r["flower_s"]),
          _x(r["ours_vs_bound"]), _x(r["ours_vs_flower"])] for r in rows])


def server_vs_dropout(rows: list[Row]) -> str:
    notes = ["server = all server-side time of the round (Flower: workflow wall time less the clients' calls); "
             "unmask = the unmask stage (Flower: after the last unmask reply, before FedAvg's aggregate_fit, "
             "timed apart as 'fedavg'). Same (k, t) both sides; Flower num_shares = k + 1 (odd: with an even "
             "count flwr 1.42 crashes in share_keys with an IndexError)."]
    for r in rows:
        if not r["flower_completed"]:
            notes.append(f"n={r['n']} dropout={r['dropout']}: Flower's round did not complete: {r['flower_errors']}")
    return _table(
        "server time vs dropout (s; ours: median of the repeats, Flower: median of its rounds); "
        "dropped clients vanish before sending their masked input",
        ["n", "d", "k", "t", "drop", "ours srv", "ours unmask", "flwr srv", "flwr unmask", "flwr fedavg",
         "srv ours/flwr", "unmask ours/flwr", "mask/client ours ms", "flwr ms"],
        [[str(r["n"]), f"{r['dim']:,}", str(r["k"]), str(r["t"]), f"{r['dropped']} ({r['dropout']:.0%})",
          _s(r["ours_server_s"]), _s(r["ours_unmask_s"]), _s(r.get("flower_server_s")), _s(r.get("flower_unmask_s")),
          _s(r.get("flower_fedavg_s")), _x(r.get("server_ratio")), _x(r.get("unmask_ratio")),
          _ms(r["ours_client_mask_stage_s"]), _ms(r.get("flower_client_mask_stage_s"))] for r in rows],
        notes)


def n_sweep(rows: list[Row]) -> str:
    return _table(
        "secagg.simulate, SecAgg+, 10% dropout at random stages (whole in-memory round)",
        ["n", "d", "k", "t", "exact", "round s", "server s", "client mask ms", "bytes/param", "peak RSS MiB"],
        [[str(r["n"]), f"{r['dim']:,}", str(r["k"]), str(r["t"]), str(r["exact"]), _s(r["total_s"]),
          _s(r["server_s"]), _ms(r["client_mask_mean_s"]), f"{r['bytes_per_parameter']:.3f}",
          "-" if r.get("peak_rss_mib") is None else f"{r['peak_rss_mib']:.0f}"] for r in rows])


def ckks(rows: list[Row]) -> str:
    return _table(
        "CKKS, one round (encrypt s per client; ours encrypts and decrypts chunks in a 2-process pool, "
        "NVFlare-style runs in one thread; values/s in millions)",
        ["system", "d", "B/value", "enc s", "agg s", "dec s", "e2e s", "enc M/s", "add M/s", "dec M/s",
         "max err", "bytes/nvf", "time/nvf"],
        [[r["system"], f"{r['dim']:,}", f"{r['bytes_per_value']:.2f}", _s(r["encrypt_s"]), _s(r["aggregate_s"]),
          _s(r["decrypt_s"]), _s(r["total_s"]), f"{r['encrypt_values_per_s'] / 1e6:.2f}",
          f"{r['add_values_per_s'] / 1e6:.2f}", f"{r['decrypt_values_per_s'] / 1e6:.2f}",
          f"{r['max_abs_error']:.1e}", _x(r["bytes_vs_nvflare"]), _x(r["time_vs_nvflare"])] for r in rows])


def upload_bytes(rows: list[Row]) -> str:
    return _table(
        "upload bytes per parameter (a surviving client's whole upload in the round / d)",
        ["system", "bytes/param", "vs fp32", "vs Flower", "setting"],
        [[r["system"], f"{r['bytes_per_parameter']:.3f}", _x(r["vs_float32"]), _x(r["vs_flower"]), r["setting"]]
         for r in rows])


TABLES: dict[str, Callable[[list[Row]], str]] = {
    "client_masking": client_masking,
    "server_vs_dropout": server_vs_dropout,
    "n_sweep": n_sweep,
    "ckks": ckks,
    "upload_bytes": upload_bytes,
}


def headline_table(report: dict[str, Any], definitions: dict[str, str]) -> str:
    lines = ["headline ratios (ours / theirs; below 1 favours ours)"]
    for key, text in definitions.items():
        lines.append(f"  {key:<26} {_x(report.get(key)):>10}   {text}")
    return "\n".join(lines)
