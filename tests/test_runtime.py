"""adm.runtime: devices, dtypes and atomic writes."""
import os
import stat

import pytest
import torch

from adm.errors import ConfigError
from adm.runtime import atomic_write_bytes, autocast, parse_device, parse_dtype


def test_atomic_writes_give_the_file_the_mode_open_would(tmp_path):
    mask = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "a" / "f.bin", b"data")
    finally:
        os.umask(mask)
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]  # no temporary left behind


def test_devices_and_dtypes():
    assert parse_device("cpu") == torch.device("cpu") and parse_device(None).type in ("cpu", "cuda", "mps")
    with pytest.raises(ConfigError, match="unknown device"):
        parse_device("gpu0")
    with pytest.raises(ConfigError, match="unsupported device"):
        parse_device("meta")
    assert parse_dtype("half") is torch.float16 and parse_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype"):
        parse_dtype("fp8")
    with autocast("cpu", "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")


def test_keep_cpu_memory_tunes_glibc_once_and_can_be_switched_off():
    import os
    import platform
    import subprocess
    import sys

    code = "from adm.runtime import keep_cpu_memory as k; print(k(), k())"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "ADM_KEEP_CPU_MEMORY": "0"})
    assert off.stdout.split() == ["False", "False"]
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert on.stdout.split() == ["True", "True"]
