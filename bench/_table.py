"""
The peer benchmark's table: a row per figure, a column per server, the
ratios to both Autobahn baselines, and where each row's load ran (the
client's and the servers' CPU use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _harness import BINARY_FROM
from _loads import Tally

Out = Callable[[str], None]
SECUREWS = "securews"
#: securews with its credential check taken out (``peers.py --unchecked``).
UNCHECKED = "securews-unchecked"
#: The baselines: bare Autobahn as an Autobahn user serves wss:// (Twisted's
#: default CertificateOptions), then behind securews's own TLS context.
BASELINES = ("autobahn-twisted", "autobahn-defaults")
#: What the targets are judged against.
TARGET_BASELINE = "autobahn-twisted"
THROUGHPUT_GOAL = 0.90
MEMORY_GOAL = 1.15
#: Client CPU use (% of its CPU) from which a row may be client-bound.
CLIENT_BOUND = 90.0
BUSY = 10.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class Row:
    """One line of the table: a figure per kind, and where it came from."""

    def __init__(self, name: str, values: dict[str, float], digits: int,
                 target: str = "", tallies: dict[str, Tally] | None = None) -> None:
        self.name, self.values, self.digits = name, values, digits
        self.target, self.tallies = target, tallies

    def ratio(self, baseline: str, kind: str = SECUREWS) -> float | None:
        base = self.values.get(baseline)
        if not base or kind not in self.values:
            return None
        return self.values[kind] / base

    def met(self) -> bool:
        ratio = self.ratio(TARGET_BASELINE)
        goal = float(self.target[2:])
        if ratio is None:
            return False
        return ratio >= goal if self.target.startswith(">") else ratio <= goal

    def cell(self, kind: str) -> str:
        value = self.values.get(kind)
        if value is None:
            return "-"
        if self.digits < 0:  # counts: thousands separated
            return f"{value:,.0f}"
        return f"{value:.{self.digits}f}"


def _size_name(size: int) -> str:
    return f"{size} B text" if size < BINARY_FROM else f"{size // 1024} KiB binary"


def rows(args: Any, results: dict[str, Any]) -> list[Row]:
    found = []
    if "memory" in results:
        found.append(Row(
            f"KiB per idle conn ({args.idle})",
            {k: r["per_conn"] / 1024 for k, r in results["memory"].items()},
            1, f"<={MEMORY_GOAL:.2f}"))
    for (size, clients), tallies in results.get("throughput", {}).items():
        name = f"{_size_name(size)}, {clients} conn{'s' * (clients > 1)}"
        fig = {k: t.row() for k, t in tallies.items()}
        found.append(Row(f"msg/s {name}", {k: f["rate"] for k, f in fig.items()},
                         0, f">={THROUGHPUT_GOAL:.2f}", tallies))
        found.append(Row("  server CPU us/msg", {k: f["us"] for k, f in fig.items()},
                         1, "", tallies))
        found.append(Row("    in the kernel",
                         {k: f["kernel_us"] for k, f in fig.items()}, 1, "", tallies))
    if "latency" in results:
        tallies = results["latency"]
        for q in (50, 99):
            found.append(Row(
                f"RTT p{q} ms, {args.rate:.0f} msg/s, 10 conns",
                {k: 1000 * percentile(t.samples, q) for k, t in tallies.items()},
                2, "", tallies))
    if "connect" in results:
        tallies = results["connect"]
        fig = {k: t.row() for k, t in tallies.items()}
        found.append(Row(f"new conns/s, {args.connectors} connectors",
                         {k: f["rate"] for k, f in fig.items()}, 0, "", tallies))
        found.append(Row("  server CPU ms/conn",
                         {k: f["us"] / 1000 for k, f in fig.items()}, 2, "", tallies))
        found.append(Row("    in the kernel",
                         {k: f["kernel_us"] / 1000 for k, f in fig.items()}, 2, "",
                         tallies))
    if "reconnect" in results:
        tallies = results["reconnect"]
        fig = {k: t.row() for k, t in tallies.items()}
        found.append(Row(f"reconnects/s, {args.connectors} connectors",
                         {k: f["rate"] for k, f in fig.items()}, 0, "", tallies))
        found.append(Row("  TLS sessions resumed, %", results["resumed"], 0))
        found.append(Row("  server CPU ms/conn",
                         {k: f["us"] / 1000 for k, f in fig.items()}, 2, "", tallies))
        found.append(Row("    in the kernel",
                         {k: f["kernel_us"] / 1000 for k, f in fig.items()}, 2, "",
                         tallies))
    if "instructions" in results:
        counted = results["instructions"]
        keys = sorted({key for r in counted.values() for key in r},
                      key=lambda k: (k != "conn", k.startswith("many"), len(k), k))
        for key in keys:
            if key == "conn":
                name = "instr/conn (handshake+close)"
            elif key.startswith("many"):
                name = f"instr/msg {_size_name(int(key.split()[1]))}, 50 conns"
            else:
                name = f"instr/msg {_size_name(int(key.split()[1]))}"
            found.append(Row(name, {k: r[key] for k, r in counted.items() if key in r},
                             -1))
    return found


def report(names: dict[str, str], args: Any, results: dict[str, Any],
           out: Out) -> None:
    """Print the table, the targets' verdicts and the warnings."""
    kinds = list(names)
    bases = [b for b in BASELINES if b in names]
    head = (f"{'':<32}" + "".join(f"{names[k]:>12}" for k in kinds)
            + "".join(f"{'sw/' + names[b][:4]:>8}" for b in bases)
            + f"{'target':>8}{'cli%':>6}{'srv% (columns)':>18}"
            + f"{'wait%':>6}{'other%':>7}")
    out(head)
    out("-" * len(head))
    busiest = client_peak = 0.0
    table = rows(args, results)
    for row in table:
        line = f"{row.name:<32}" + "".join(f"{row.cell(k):>12}" for k in kinds)
        for base in bases:
            ratio = row.ratio(base)
            line += f"{'-' if ratio is None else f'{ratio:.2f}':>8}"
        line += f"{row.target:>8}"
        if row.tallies is None or row.name.startswith("  "):
            line += f"{'':>6}{'':>18}{'':>6}{'':>7}"
        else:
            fig = {k: t.row() for k, t in row.tallies.items()}
            other = max(f["other"] for f in fig.values())
            client = max(f["client"] for f in fig.values())
            busiest, client_peak = max(busiest, other), max(client_peak, client)
            srv = "/".join(f"{fig[k]['server']:.0f}" if k in fig else "-"
                           for k in kinds)
            line += (f"{client:>6.0f}{srv:>18}"
                     f"{max(f['wait'] for f in fig.values()):>6.0f}{other:>7.0f}")
        out(line)
    out("")
    base_name = names.get(TARGET_BASELINE, TARGET_BASELINE)
    for target in sorted({row.target for row in table if row.target}, reverse=True):
        judged = [row for row in table if row.target == target]
        worst = (min if target.startswith(">") else max)(
            judged, key=lambda r: r.ratio(TARGET_BASELINE) or 0.0)
        what = "throughput" if target.startswith(">") else "memory per idle connection"
        out(f"target: securews {what} {target} x {base_name}: "
            f"{'MET' if all(r.met() for r in judged) else 'NOT MET'} "
            f"(worst {worst.ratio(TARGET_BASELINE) or 0:.3f}: {worst.name})")
    unchecked = [row for row in table if row.ratio(TARGET_BASELINE, UNCHECKED)
                 and not row.name.startswith("    ")]
    if unchecked:
        out(f"without the credential check ({names[UNCHECKED]}), x {base_name}: "
            + "; ".join(f"{row.name.strip()} "
                        f"{row.ratio(TARGET_BASELINE, UNCHECKED) or 0:.2f} "
                        f"(securews {row.ratio(TARGET_BASELINE) or 0:.2f})"
                        for row in unchecked))
    if client_peak:
        bound = ("" if client_peak < CLIENT_BOUND else
                 ": the client may have been the limit in some rows")
        out(f"client CPU: at most {client_peak:.0f}% of its CPU in any row{bound}")
    for kind, tally in results.get("latency", {}).items():
        achieved = tally.row()["rate"]
        if achieved < 0.95 * args.rate:
            out(f"note: the latency load reached only {achieved:.0f} msg/s "
                f"against {names[kind]}")
    if busiest >= BUSY:
        out(f"note: other programs used up to {busiest:.0f}% of a CPU during "
            "the run (other%; wait%: a server runnable but not running); the "
            "kinds took turns, so they share the disturbance, but the rates "
            "are noisy: the CPU-per-message rows and instruction counts are "
            "the steadier figures, or rerun on a quiet machine")
