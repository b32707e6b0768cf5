"""``bertrt doctor``: every candidate implementation of every op, self-checked and timed on this machine.

The same records the kernel plan uses (``bertrt.ops.measure``, cached), laid out as one table:
op, implementation, ISA, result, error vs bound, median time at the model's shapes per token bucket.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from . import gemm_choice, measure, plan


def rows(model_shape: dict, precisions: tuple[str, ...], device: str = "cpu", progress: bool = True) -> list[dict]:
    """One row per (op, implementation, precision): check result and timings in ms per bucket."""
    work = [(op, impl, precision) for precision in precisions for op in plan.PLANNED_OPS
            for impl in plan.candidates(op, device)]
    work += [("gemm", impl, precision) for precision in precisions
             for impl in gemm_choice._gemm_candidates(precision, batch_invariant=False)]
    if device == "cpu":
        work += [("int8", impl, "int8") for impl in gemm_choice.int8_candidates("cpu", batch_invariant=False)]
    out = []
    for op, impl, precision in tqdm(work, desc="bertrt doctor", disable=not progress, leave=False):
        row = {"op": op, "implementation": impl.split(":", 1)[0], "isa": impl.split(":", 1)[1] if ":" in impl else "",
               "precision": precision, "batch_invariant": plan.invariant(op, impl)}
        if op == "int8":
            if impl == "packed":  # a candidate only where bertrt._C is built
                from . import cpu_kernels

                row["isa"] = cpu_kernels.int8_packed_kernel()
            row.update(result="pass", times_ms={f"{gemm_choice.BUCKET_INT8}": 1e3 * gemm_choice._timed_int8(
                impl, model_shape)})
        elif op == "gemm":
            record = (measure.checked("linear", impl, "float32", model_shape, device) if impl != "torch"
                      else {"passed": True})
            row.update(_result(record), times_ms={f"{b}": 1e3 * gemm_choice._timed_gemm(impl, precision, model_shape, b)
                                                  for b in measure.BUCKETS} if record["passed"] else {})
        else:
            record = measure.checked(op, impl, precision, model_shape, device)
            times = {}
            if record["passed"]:
                for bound in measure.BUCKETS:
                    shape = plan.bucket_shape(model_shape, bound, ragged=False)
                    times[f"{bound}"] = 1e3 * measure.timed(op, impl, precision, shape, device)
                    if op == "attention":
                        shape = plan.bucket_shape(model_shape, bound, ragged=True)
                        times[f"{bound} ragged"] = 1e3 * measure.timed(op, impl, precision, shape, device)
            row.update(_result(record), times_ms=times)
        out.append(row)
    measure.store(device).save()
    return out


def _result(record: dict) -> dict:
    result = {"result": "pass" if record["passed"] else "FAIL"}
    if "error" in record:
        result["error"] = record["error"]
    if "bound" in record:
        result["bound"] = record["bound"]
    return result


def format_table(table: list[dict]) -> str:
    buckets = sorted({k for row in table for k in row.get("times_ms", {})},
                     key=lambda k: (int(k.split()[0]), k))
    header = ["op", "impl", "isa", "dtype", "inv", "result", "error", "bound", *[f"ms@{b}" for b in buckets]]
    lines = []
    for row in table:
        error = row.get("error")
        invariant = "yes" if row["batch_invariant"] else "no"
        cells = [row["op"], row["implementation"], row["isa"], row["precision"], invariant,
                 row["result"], f"{error:.2e}" if isinstance(error, float) else str(error or "")[:60],
                 f"{row['bound']:.2e}" if "bound" in row else "",
                 *[f"{row['times_ms'][b]:.3f}" if b in row.get("times_ms", {}) else "" for b in buckets]]
        lines.append(cells)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), *(fmt.format(*cells) for cells in lines)])
