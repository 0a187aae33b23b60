"""Calls from several Python threads at once.

The extension releases the GIL while computing, so calls overlap; each must
give exactly what the same call gives alone. (Whether they overlap in time is
a matter of timing and is not asserted.)
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

import raggedattn
from attention_reference import BFLOAT16
from problems import random_problem


def problems_and_options():
    cases = []
    for index in range(12):
        rng = np.random.default_rng(100 + index)
        dtype = [np.float32, np.float16, BFLOAT16][index % 3]
        problem = random_problem(rng, batch=3 + index % 4,
                                 num_qo_heads=4 * (1 + index % 2),
                                 num_kv_heads=2, head_dim=32 + 16 * (index % 3),
                                 seq_len=400 + 37 * index, dtype=dtype)
        options = dict(num_threads=1 + index % 3, block_size=16 + index,
                       return_lse=True)
        if index % 2:
            options["sliding_window"] = (50, 0)
            options["softmax_aux"] = rng.standard_normal(2).astype(np.float32)
        cases.append((problem, options))
    return cases


def test_concurrent_calls_match_serial_calls():
    cases = problems_and_options()
    serial = [raggedattn.ragged_decode_attention(**problem, **options)
              for problem, options in cases]

    def call(case):
        problem, options = case
        return raggedattn.ragged_decode_attention(**problem, **options)

    with ThreadPoolExecutor(max_workers=6) as pool:
        for _ in range(3):
            concurrent = list(pool.map(call, cases))
            for (output, lse), (expected_output, expected_lse) in zip(
                    concurrent, serial):
                np.testing.assert_array_equal(output, expected_output)
                np.testing.assert_array_equal(lse, expected_lse)


def test_concurrent_calls_share_one_read_only_cache():
    # Many threads reading the same key/value views at once, each with its
    # own query, as a server decoding several requests would.
    rng = np.random.default_rng(200)
    problem = random_problem(rng, batch=4, seq_len=2000)
    queries = [rng.standard_normal(problem["query"].shape).astype(np.float32)
               for _ in range(8)]
    for array in problem.values():
        array.flags.writeable = False

    def call(query):
        return raggedattn.ragged_decode_attention(
            query, problem["key"], problem["value"],
            problem["sequence_start"], problem["sequence_end"], num_threads=2)

    serial = [call(query) for query in queries]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for output, expected in zip(pool.map(call, queries), serial):
            np.testing.assert_array_equal(output, expected)
