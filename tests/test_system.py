"""Process settings for speed."""

import sys

import pytest

from qmix.system import configure_allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_allocator_keeps_freed_memory_and_is_idempotent():
    assert configure_allocator() is True
    assert configure_allocator() is True
