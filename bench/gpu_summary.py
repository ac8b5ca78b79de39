"""Summary table of a bench/gpu_check.sh output folder: one row per step, from its NAME.json (bench/gpu_run.py),
NAME.rc (the step's exit code) and NAME.log (the last error line when the step left no record).

    python bench/gpu_summary.py OUTDIR        # prints Markdown; also writes OUTDIR/summary.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def last_error(log: Path) -> str:
    if not log.is_file():
        return ""
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    hits = [line for line in lines if "Error" in line or "error:" in line or "Killed" in line]
    return (hits[-1] if hits else (lines[-1] if lines else ""))[:160]


def rows(out: Path) -> list[dict]:
    found = []
    for rc_file in sorted(out.glob("*.rc"), key=lambda p: p.stat().st_mtime):
        name = rc_file.stem
        rc = rc_file.read_text().strip()
        record_file = out / f"{name}.json"
        record = json.loads(record_file.read_text()) if record_file.is_file() else {}
        record.setdefault("name", name)
        record["rc"] = rc
        if rc.startswith("skipped"):
            record["status"] = rc
        elif "status" not in record or (rc != "0" and record.get("status") == "ok"):
            record["status"] = f"failed (exit {rc})"
            record.setdefault("error", last_error(out / f"{name}.log"))
        found.append(record)
    return found


def cell(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(records: list[dict]) -> str:
    head = ("| step | status | wall s | micro-batch × seq | s/step | tokens/s | MFU | peak GiB (alloc / reserved) "
            "| ember plan GiB | plan vs alloc | train loss |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        peak = r.get("peak_allocated_gib")
        plan = r.get("plan_peak_gib")
        error = f"{(plan - peak) / peak * 100:+.0f}%" if plan and peak else "–"
        mfu = f"{r['mfu'] * 100:.1f}%" if r.get("mfu") is not None else "–"
        shape = f"{r.get('micro_batch', '–')} × {r.get('mean_seq') or r.get('max_length', '–')}"
        status = r["status"] + (f": {r['error']}" if r.get("error") and r["status"] != "ok" else "")
        lines.append(f"| {r['name']} | {status} | {cell(r.get('wall_s'))} | {shape} | {cell(r.get('s_per_step'), 3)} "
                     f"| {cell(r.get('tokens_per_s'), 0)} | {mfu} | {cell(peak, 2)} / {cell(r.get('peak_reserved_gib'), 2)} "
                     f"| {cell(plan, 2)} | {error} | {cell(r.get('final_loss'), 4)} |")
    return "\n".join(lines)


def main() -> int:
    out = Path(sys.argv[1])
    records = rows(out)
    (out / "summary.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    print(markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
