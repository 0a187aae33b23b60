#!/usr/bin/env python3
"""raggedattn against ejkernel's portable JAX backend: agreement and speed.

ejkernel (PyPI) implements the operation this project's contract grew from;
its XLA backend, ejkernel.kernels._xla.ragged_decode_attention, runs on CPU
under JAX. This script installs nothing. With both packages importable:

    python3 -m pip install ./ ejkernel      # ejkernel pulls in jax[cpu]
    python3 bench/compare_ejkernel.py [--threads 2] [--contexts 4096,...]

it prints two tables:

  1. agreement: for a sweep of shapes and options, the largest difference
     between the two, and each one's error against a float64 evaluation of
     SPEC.md (python/tests/attention_reference.py), all as SPEC.md's relative
     error (max |out - ref| / max |value over attended rows|). Where they
     disagree, the SPEC.md rule that ejkernel's backend does not follow, as
     read from its source (ejkernel/kernels/_xla/ragged_decode_attention/
     _xla_impl_fwd.py). A disagreement without a known reason is printed as
     UNEXPLAINED and makes the script exit 1.
  2. speed: time per call at the Llama-3-8B attention shape (32 query heads,
     8 KV heads, head_dim 128, bf16) for several context lengths, both on
     the same JAX input arrays and the same cores: ejkernel jit-compiled
     (compile and warm-up excluded, block_until_ready), raggedattn with
     num_threads equal to the cores given.
"""

import argparse
import math
import os
import pathlib
import statistics
import sys
import time

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2,
                        help="cores for both libraries (default 2)")
    parser.add_argument("--contexts", default="4096,8192,16384,32768",
                        help="context lengths of the speed table")
    parser.add_argument("--batch", type=int, default=4,
                        help="sequences per call in the speed table")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed calls per speed cell (median reported)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-agreement", action="store_true")
    return parser.parse_args()


ARGS = parse_arguments()
# Both libraries get the same cores: XLA's CPU client and OpenMP size their
# thread pools from the affinity mask, so it is set before either loads.
_available = sorted(os.sched_getaffinity(0))
if ARGS.threads > len(_available):
    sys.exit(f"error: --threads {ARGS.threads} but only {len(_available)} "
             f"cores are available")
os.sched_setaffinity(0, _available[:ARGS.threads])

try:
    import jax
    import jax.numpy as jnp
    import ml_dtypes
    import numpy as np
    from ejkernel.kernels._xla.ragged_decode_attention import (
        ragged_decode_attention as ejkernel_attention)
    from ejkernel.ops import FwdParams
except ImportError as error:
    sys.exit(f"error: {error.name} is not importable. This script installs "
             f"nothing; run: python3 -m pip install ./ ejkernel")
import raggedattn  # noqa: E402

sys.path.insert(0, str(REPOSITORY / "python" / "tests"))
from attention_reference import (  # noqa: E402
    OUTPUT_TOLERANCE, reference_attention, value_scale)

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
DTYPE_NAMES = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16",
               BFLOAT16: "bf16"}

# Why ejkernel's XLA backend departs from SPEC.md, from its source. Keys are
# referred to by the sweep below.
REASONS = {
    "window_minus_one":
        "SPEC rule 1: -1 drops that side's bound. ejkernel applies -1 "
        "literally (p + 1 <= j, or j <= p - 1), so (-1, 0) attends to "
        "nothing and (L, -1) drops the query's own position",
    "all_sinks_neg_inf":
        "SPEC rule 4/5: a -inf sink contributes nothing. ejkernel seeds its "
        "running max with max(sinks) = -inf and its sum with "
        "sum(exp(sinks - max)) = exp(-inf + inf) = NaN, so every output "
        "of that head is NaN",
    "unattended_nan":
        "SPEC 'Key and value rows that are not attended are never read'. "
        "ejkernel multiplies whole blocks by masked weights (0 * NaN = NaN), "
        "so stale NaN/inf in the cache outside [start, end) reaches the "
        "output",
    "bf16_logits":
        "SPEC 'Arithmetic is at least f32'. With bf16 inputs ejkernel forms "
        "q * scale, the logits q . k and the soft cap in bf16 (8-bit "
        "mantissa): a logit near 32 is off by up to 0.125, so its weight "
        "by up to 13%. Softmax ignores the shared offset; bf16 rounding "
        "does not",
    "bf16_accumulation":
        "SPEC 'Arithmetic is at least f32 ... rounded once at the end'. "
        "ejkernel keeps its running output in the query's dtype and rounds "
        "it to bf16 after every 256-token block; once a block's true update "
        "is between half and one bf16 ulp it moves a whole ulp, so over 128 "
        "blocks the output drifts from the true mean (q = 0 makes every "
        "logit exact, isolating the accumulation)",
}


def random_inputs(rng, batch, num_qo_heads, num_kv_heads, head_dim, seq_len,
                  dtype, ranges):
    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    start, end = (np.array(side, np.int32) for side in zip(*ranges))
    assert len(start) == batch
    return dict(query=normal(batch, num_qo_heads, head_dim),
                key=normal(batch, seq_len, num_kv_heads, head_dim),
                value=normal(batch, seq_len, num_kv_heads, head_dim),
                sequence_start=start, sequence_end=end)


def sweep():
    """Yields (name, inputs, options, expected reason key or None)."""
    rng = np.random.default_rng(2024)
    f32, f16 = np.dtype(np.float32), np.dtype(np.float16)
    # Rows: a full one, one starting past the first 256-token block, a short
    # one, an empty one, one ending early.
    def rows(seq_len):
        return [(0, seq_len), (min(300, seq_len - 1), seq_len), (5, 9),
                (seq_len // 2, seq_len // 2), (0, seq_len - 3)]

    def case(name, num_qo_heads, num_kv_heads, head_dim, seq_len, dtype,
             reason=None, query_scale=1.0, value_drift=None,
             shared_component=None, **options):
        inputs = random_inputs(rng, 5, num_qo_heads, num_kv_heads, head_dim,
                               seq_len, dtype, rows(seq_len))
        if shared_component is not None:
            # q and every k share one large component: all logits sit near
            # shared_component^2 * scale, a constant softmax ignores.
            inputs["query"][..., 0] = shared_component
            inputs["key"][..., 0] = shared_component
        query = inputs["query"].astype(np.float32) * query_scale
        inputs["query"] = query.astype(dtype)
        if value_drift is not None:
            # Small noise on a ramp from value_drift[0] at position 0 to
            # value_drift[1] at the end: a cache whose content drifts.
            ramp = np.linspace(*value_drift, seq_len, dtype=np.float32)
            value = (inputs["value"].astype(np.float32) * 0.1 +
                     ramp[None, :, None, None])
            inputs["value"] = value.astype(dtype)
        return name, inputs, options, reason

    yield case("MHA 8/8, D 64, S 700", 8, 8, 64, 700, f32)
    yield case("GQA 32/8, D 128, S 1000", 32, 8, 128, 1000, f32)
    yield case("MQA 8/1, D 128, S 513", 8, 1, 128, 513, f32)
    yield case("GQA 14/2 (G 7), D 80, S 300", 14, 2, 80, 300, f32)
    yield case("GQA 32/8, D 128, S 1000", 32, 8, 128, 1000, f16)
    yield case("GQA 32/8, D 128, S 1000", 32, 8, 128, 1000, BFLOAT16)
    yield case("GQA 32/8, D 128, S 8192", 32, 8, 128, 8192, BFLOAT16)
    for dtype in (BFLOAT16, f32):
        yield case("logits 32 +- 3 (q, k share a component)", 8, 2, 64, 600,
                   dtype, shared_component=16.0,
                   reason="bf16_logits" if dtype == BFLOAT16 else None)
    for dtype in (BFLOAT16, f32):
        yield case("q = 0, values drift 1 to 4, S 32768", 8, 2, 64, 32768,
                   dtype, query_scale=0.0, value_drift=(1.0, 4.0),
                   reason="bf16_accumulation" if dtype == BFLOAT16 else None)
    yield case("scale 0.3", 8, 2, 64, 600, f32, softmax_scale=0.3)
    yield case("logits ~150 (scale 6)", 8, 2, 64, 600, f32, softmax_scale=6.0)
    yield case("block 64", 8, 2, 64, 600, f32, block_size=64)
    yield case("soft cap 30", 8, 2, 64, 600, f32, softmax_scale=1.0,
               logits_soft_cap=30.0)
    yield case("soft cap 5", 8, 2, 64, 600, f32, softmax_scale=1.0,
               logits_soft_cap=5.0)
    yield case("window (127, 0)", 8, 2, 64, 600, f32,
               sliding_window=(127, 0))
    yield case("window (0, 0)", 8, 2, 64, 600, f32, sliding_window=(0, 0))
    yield case("window (-1, 0)", 8, 2, 64, 600, f32, sliding_window=(-1, 0),
               reason="window_minus_one")
    yield case("window (64, -1)", 8, 2, 64, 600, f32,
               sliding_window=(64, -1), reason="window_minus_one")
    aux_rng = np.random.default_rng(7)
    for shape, label in [((8, 3), "[Hq, 3]"), ((2, 3), "[Hkv, 3]"),
                         ((3,), "[3]")]:
        yield case(f"sinks {label}", 8, 2, 64, 600, f32,
                   softmax_aux=aux_rng.standard_normal(shape).astype(f32))
    partly = aux_rng.standard_normal((8, 2)).astype(f32)
    partly[:, 0] = -np.inf
    yield case("sinks [Hq, 2], one -inf", 8, 2, 64, 600, f32,
               softmax_aux=partly)
    yield case("sinks [2] all -inf", 8, 2, 64, 600, f32,
               softmax_aux=np.full(2, -np.inf, f32),
               reason="all_sinks_neg_inf")
    yield case("sinks, window, cap", 8, 2, 64, 600, f32,
               softmax_scale=0.5, logits_soft_cap=20.0,
               sliding_window=(200, 0),
               softmax_aux=aux_rng.standard_normal((2, 2)).astype(f32))
    name, inputs, options, _ = case("NaN in unattended rows", 8, 2, 64, 600,
                                    f32)
    for b, (start, end) in enumerate(zip(inputs["sequence_start"],
                                         inputs["sequence_end"])):
        inputs["key"][b, :start] = np.nan
        inputs["value"][b, :start] = np.nan
        inputs["value"][b, end:] = np.nan
    yield name, inputs, options, "unattended_nan"


def run_ejkernel(inputs, options):
    """Returns ejkernel's output as numpy, or the error it raised."""
    block_size = options.get("block_size")
    # softmax_scale, window and cap are Python values baked into the trace,
    # as ejkernel's own jitted entry point treats them.
    def call(query, key, value, start, end, softmax_aux):
        return ejkernel_attention(
            query, key, value, start, end,
            softmax_scale=options.get("softmax_scale"),
            fwd_params=(None if block_size is None else
                        FwdParams(kv_blocksize=block_size)),
            sliding_window=options.get("sliding_window"),
            logits_soft_cap=options.get("logits_soft_cap"),
            softmax_aux=softmax_aux)

    aux = options.get("softmax_aux")
    arguments = [jnp.asarray(inputs[name]) for name in
                 ("query", "key", "value", "sequence_start", "sequence_end")]
    arguments.append(None if aux is None else jnp.asarray(aux))
    return np.asarray(jax.jit(call)(*arguments))


def relative_error(output, expected, scale):
    difference = np.abs(np.asarray(output, np.float64) - expected)
    if np.isnan(difference).any():
        return math.nan
    return float(difference.max()) / scale


def agreement_table():
    print("## Agreement: raggedattn vs ejkernel XLA backend (CPU)\n")
    print("Errors are SPEC.md's relative error, max |a - b| / max |value "
          "over attended rows|; 'bound' is SPEC.md's for the dtype.\n")
    print("| case | dtype | rag vs ejk | rag vs f64 | ejk vs f64 | bound "
          "| verdict |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    unexplained = 0
    explanations = {}
    for name, inputs, options, reason in sweep():
        dtype = inputs["query"].dtype
        bound = OUTPUT_TOLERANCE[dtype]
        ours = raggedattn.ragged_decode_attention(**inputs, **options)
        theirs = run_ejkernel(inputs, options)
        reference_options = {key: value for key, value in options.items()
                             if key != "block_size"}
        expected, _ = reference_attention(**inputs, **reference_options)
        scale = value_scale(inputs["value"], inputs["sequence_start"],
                            inputs["sequence_end"],
                            options.get("sliding_window"))
        between = relative_error(ours, theirs.astype(np.float64), scale)
        our_error = relative_error(ours, expected, scale)
        their_error = relative_error(theirs, expected, scale)
        their_ok = their_error <= bound  # False for NaN
        if our_error > bound or math.isnan(our_error):
            verdict = "UNEXPLAINED: raggedattn outside the bound"
            unexplained += 1
        elif their_ok:
            verdict = "agree"
            if reason is not None:
                verdict += f" (expected to differ: {reason})"
        elif reason is not None:
            verdict = f"differ: {reason}"
            explanations[reason] = REASONS[reason]
        else:
            verdict = "UNEXPLAINED"
            unexplained += 1
        print(f"| {name} | {DTYPE_NAMES[dtype]} | {between:.2e} | "
              f"{our_error:.2e} | {their_error:.2e} | {bound:g} | "
              f"{verdict} |")
    print("\nNot compared: Dv != D (ejkernel requires value's head_dim to "
          "equal key's; its type check rejects the call) and lse "
          "(ejkernel returns none).")
    if explanations:
        print("\nReasons:\n")
        for key, text in explanations.items():
            print(f"- {key}: {text}")
    return unexplained


def time_calls(functions, repeats):
    """Returns the median seconds per call of each function, after warm-up.

    Calls alternate between the functions so that a change in the load of
    the machine during the run affects all of them alike.
    """
    for function in functions:
        for _ in range(2):
            function()
    samples = [[] for _ in functions]
    for _ in range(repeats):
        for function, times in zip(functions, samples):
            started = time.perf_counter()
            function()
            times.append(time.perf_counter() - started)
    return [statistics.median(times) for times in samples]


def measure_context(rng, compiled, batch, context, shape):
    """Returns (raggedattn seconds, ejkernel seconds) at one context."""
    num_qo_heads, num_kv_heads, head_dim = shape

    def normal(*dims):
        return jnp.asarray(rng.standard_normal(dims, dtype=np.float32),
                           jnp.bfloat16)

    query = normal(batch, num_qo_heads, head_dim)
    key = normal(batch, context, num_kv_heads, head_dim)
    value = normal(batch, context, num_kv_heads, head_dim)
    start = jnp.zeros(batch, jnp.int32)
    end = jnp.full(batch, context, jnp.int32)

    def ours():
        raggedattn.ragged_decode_attention(
            query, key, value, start, end,
            num_threads=ARGS.threads).block_until_ready()

    def theirs():
        compiled(query, key, value, start, end).block_until_ready()

    return time_calls([ours, theirs], ARGS.repeats)


def speed_table():
    shape = num_qo_heads, num_kv_heads, head_dim = 32, 8, 128
    batch = ARGS.batch
    print(f"\n## Speed: Llama-3-8B attention shape ({num_qo_heads} query "
          f"heads, {num_kv_heads} KV heads, head_dim {head_dim}), bf16, "
          f"batch {batch}, {ARGS.threads} threads\n")
    print(f"Median of {ARGS.repeats} calls after warm-up; every row attends "
          f"to its whole context. KV GB/s counts the key and value bytes "
          f"the call must read.\n")
    print("| context | raggedattn ms | ejkernel ms | ejkernel / raggedattn "
          "| raggedattn KV GB/s | ejkernel KV GB/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(99)
    compiled = jax.jit(lambda q, k, v, s, e: ejkernel_attention(q, k, v, s, e))
    for context in (int(c) for c in ARGS.contexts.split(",")):
        ours, theirs = measure_context(rng, compiled, batch, context, shape)
        kv_bytes = 2 * batch * context * num_kv_heads * head_dim * 2
        print(f"| {context} | {ours * 1e3:.2f} | {theirs * 1e3:.2f} | "
              f"{theirs / ours:.1f}x | {kv_bytes / ours / 1e9:.1f} | "
              f"{kv_bytes / theirs / 1e9:.1f} |", flush=True)


def main():
    print(f"raggedattn {raggedattn.__version__} "
          f"({raggedattn.active_simd_target()}), jax {jax.__version__}, "
          f"ejkernel {_ejkernel_version()}, {ARGS.threads} cores, load "
          f"average {os.getloadavg()[0]:.1f} at start\n")
    unexplained = 0 if ARGS.skip_agreement else agreement_table()
    if not ARGS.skip_speed:
        speed_table()
    if unexplained:
        print(f"\n{unexplained} UNEXPLAINED disagreement(s)")
        return 1
    return 0


def _ejkernel_version():
    from importlib import metadata
    try:
        return metadata.version("ejkernel")
    except metadata.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
