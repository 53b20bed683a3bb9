"""Process settings for speed."""

import sys

import pytest

from qmix.system import configure_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_allocator_keeps_freed_memory_and_is_idempotent():
    assert configure_allocator() is True
    assert configure_allocator() is True


def test_resident_mib_reads_this_process():
    from qmix.system import resident_mib

    before = resident_mib()
    if not sys.platform.startswith("linux"):
        assert before is None
        return
    import mmap

    block = mmap.mmap(-1, 64 << 20)  # fresh pages (not heap memory freed earlier), each touched
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1
    assert resident_mib() - before > 60
    block.close()


def test_training_log_has_throughput_and_memory(tmp_path):
    import json

    from qmix.config import resolve
    from qmix.trainer import run_training

    cfg = resolve({"alg": "qmix", "env": "matrix:two-step", "seed": 0, "progress": False, "t_max": 600, "device": "cpu",
                   "log_interval": 200, "use_tensorboard": False, "torch_threads": 1})
    run_training(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/return_mean" in r]
    assert len(train) >= 2
    for r in train:
        assert r["perf/steps_per_s"] > 0
        assert "perf/cuda_mib" not in r
        if sys.platform.startswith("linux"):
            assert 10 < r["perf/rss_mib"] < 64 * 1024
    assert not any(k.startswith("perf/") for r in rows if "test/return_mean" in r for k in r)
