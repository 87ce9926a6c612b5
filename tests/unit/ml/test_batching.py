"""Micro-batch sizing: the memory estimate and its refusals, the measurement's choice and fallback, the
per-model cache a GPU worker writes, and the background writer that overlaps PNG encoding with sampling."""

from __future__ import annotations

import logging
import threading

import pytest

from common.ml import batching
from common.ml.presets import get_preset
from common.research.shards import BackgroundWriter

IMAGENET = get_preset("dmd2-imagenet64").config
TINY = get_preset("tiny16").config


def test_the_estimate_grows_with_the_batch_and_refusals_name_the_largest_that_fits():
    assert batching.working_set_mib(IMAGENET, 32) == pytest.approx(2 * batching.working_set_mib(IMAGENET, 16))
    assert batching.working_set_mib(TINY, 16) < batching.working_set_mib(IMAGENET, 1)
    most = batching.largest_fitting(IMAGENET, 8192)
    assert batching.working_set_mib(IMAGENET, most) <= 8192 < batching.working_set_mib(IMAGENET, 2 * most)
    assert batching.check_micro_batch(IMAGENET, most, 8192) is None
    refusal = batching.check_micro_batch(IMAGENET, 2 * most, 8192)
    assert "over the budget of 8192 MiB" in refusal and f"use {most} or less" in refusal
    assert "between 1 and 1024" in batching.check_micro_batch(TINY, 0, 8192)


def test_the_measurement_keeps_the_largest_batch_within_the_budget():
    peaks = {16: 900.0, 32: 1800.0, 64: 3600.0, 128: 7200.0}
    assert batching.pick_largest((16, 32, 64, 128), peaks.__getitem__, 4000) == 64

    def oom_at_64(b):
        if b >= 64:
            raise MemoryError(b)
        return 10.0

    assert batching.pick_largest((16, 32, 64, 128), oom_at_64, 4000) == 32


def test_a_failed_or_hopeless_measurement_falls_back_to_the_safe_size_with_a_log(caplog):
    def broken(b):
        raise RuntimeError("CUDA driver error")

    with caplog.at_level(logging.WARNING, logger="common.ml.batching"):
        assert batching.pick_largest((16, 32), broken, 4000, "cuda:0") == batching.SAFE_MICRO_BATCH
        assert batching.pick_largest((16, 32), lambda b: 1e9, 4000, "cuda:0") == batching.SAFE_MICRO_BATCH
    assert "measurement failed on cuda:0" in caplog.text and "not even 16 fits" in caplog.text


def test_measured_sizes_are_cached_per_checkpoint_and_the_smallest_device_wins(tmp_path):
    assert batching.read_measured(tmp_path, "abc") is None
    batching.write_measured(tmp_path, "abc", "cuda:0", 256)
    batching.write_measured(tmp_path, "abc", "cuda:1", 64)
    batching.write_measured(tmp_path, "other", "cuda:0", 16)
    assert batching.read_measured(tmp_path, "abc") == 64
    assert batching.read_measured(tmp_path, "other") == 16
    (tmp_path / "run" / "micro-batch.json").write_text("{not json")
    assert batching.read_measured(tmp_path, "abc") is None  # a damaged cache is no measurement


def test_a_cpu_model_is_not_measured():
    from common.ml.networks import EDMPrecond

    assert batching.measure_micro_batch(EDMPrecond(**TINY), 8192) == batching.CPU_MICRO_BATCH


def test_the_background_writer_runs_calls_in_order_off_the_caller_thread_and_bounds_its_queue():
    done, threads = [], set()
    gate = threading.Event()

    def write(i):
        gate.wait(5)
        threads.add(threading.current_thread().name)
        done.append(i)

    writer = BackgroundWriter(depth=2)
    writer.submit(write, 0)  # taken by the thread, blocked on the gate
    writer.submit(write, 1)
    writer.submit(write, 2)  # the queue now holds two
    blocked = threading.Thread(target=writer.submit, args=(write, 3))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive(), "a full queue makes the producer wait"
    gate.set()
    blocked.join(5)
    writer.close()
    assert done == [0, 1, 2, 3] and threads == {"chunk-writer"}


def test_a_failed_write_is_raised_in_the_producer_and_later_writes_are_skipped():
    done = []

    def fail(i):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        with BackgroundWriter() as writer:
            writer.submit(fail, 0)
            writer.submit(done.append, 1)
    assert done == []
