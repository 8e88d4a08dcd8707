"""Threads (the GIL is released), multiprocessing pools (fork and spawn) and, if installed, Ray."""

import importlib.util
import multiprocessing as mp
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import cadvlm
from conftest import box_program, heavy_program


def work(i):
    """A picklable task: the volume of a box and a reward."""
    p = box_program(1 + i, 1, 1)
    return cadvlm.execute(p)["volume"], cadvlm.reward([p], [box_program(1, 1, 1)], normalize="raw")[0]


def expected(i):
    return pytest.approx(1.0 + i), pytest.approx(1.0 / (1 + i))


def test_threads_give_the_serial_results(references):
    srcs = [s for _, s, _ in references][:60]
    serial = [cadvlm.execute(s) for s in srcs]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(cadvlm.execute, srcs))
    for a, b in zip(serial, threaded):
        assert a["ok"] == b["ok"] and a["volume"] == b["volume"] and a["error"] == b["error"]
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(work, range(6))) == [expected(i) for i in range(6)]


def test_the_gil_is_released_while_rust_works(references):
    srcs = [s for _, s, _ in references] * 8
    ticks = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=count)
    t.start()
    try:
        start = ticks[0]
        cadvlm.execute_many(srcs, threads=1)
        during = ticks[0] - start
    finally:
        stop.set()
        t.join()
    # with the GIL held for the whole call the counter could not run at all
    assert during > 10_000, during


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_pool(method):
    if method not in mp.get_all_start_methods():
        pytest.skip(f"no {method} here")
    # use the executor (and its threads) in the parent first: a forked child must rebuild them
    cadvlm.execute_many([box_program()] * 8, threads=2)
    cadvlm.execute(box_program())
    with mp.get_context(method).Pool(2) as pool:
        got = pool.map(work, range(4), chunksize=1)
        many = pool.apply(cadvlm.execute_many, ([box_program()] * 5,))
    assert got == [expected(i) for i in range(4)]
    assert [m["volume"] for m in many] == [pytest.approx(8.0)] * 5


def test_fork_child_still_enforces_the_deadline():
    """A forked child has no inherited epoch ticker thread; the sandbox must start its own."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork here")
    slow = heavy_program()  # ~0.5 s natively, more in the guest
    assert cadvlm.execute(slow, timeout_ms=50, fuel=10**15)["kind"] == "timeout"  # here
    with mp.get_context("fork").Pool(1) as pool:
        rep = pool.apply(cadvlm.execute, (slow,), {"timeout_ms": 50, "fuel": 10**15})
    assert rep["kind"] == "timeout" and rep["elapsed_ms"] < 1000, rep


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_local_cluster():
    import ray

    import os

    # the workers import this module and conftest by name, as a pool's workers do
    here = os.path.dirname(os.path.abspath(__file__))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": here}},
    )
    try:
        remote = ray.remote(work)
        got = ray.get([remote.remote(i) for i in range(4)])
        assert got == [expected(i) for i in range(4)]
        f = cadvlm.trl_reward()
        rewards = ray.get(
            ray.remote(lambda fn, c, t: fn(completions=c, cadquery=t)).remote(
                f, ["x = (", box_program()], [box_program(), box_program()]
            )
        )
        assert rewards == [-0.5, pytest.approx(1.0)]
        with pytest.raises(cadvlm.CadError) as e:
            ray.get(ray.remote(cadvlm.iou).remote("x = (", box_program()))
        assert e.value.kind == "syntax"
        print(f"ray {ray.__version__}: 4 tasks + a TRL reward + a CadError through a local cluster")
    finally:
        ray.shutdown()
