"""The device a benchmark ran on: CPU model, its vector extensions, GPUs, TensorFlow build.

Every bench script prints ``describe()`` above its table, so a figure always
names the hardware behind it. Nothing here assumes a CPU-only machine: on a
GPU machine the GPUs TensorFlow sees are listed and the benches' TensorFlow
ops run on them unchanged (TensorFlow places them there by default).
"""

import os
import platform

# /proc/cpuinfo flags that decide how fast convolutions and matrix products can run, in the order printed.
VECTOR_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(CPU model name, its flags) from ``/proc/cpuinfo``; (platform's processor name, empty set) elsewhere."""
    model, flags = "", set()
    try:
        with open(path, encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or "unknown CPU", flags


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def gpu_names() -> list[str]:
    """Names of the GPUs TensorFlow sees (empty on a CPU-only machine, found without importing TensorFlow)."""
    if not any(os.path.exists(path) for path in ("/dev/nvidiactl", "/dev/dxg")) and not os.path.isdir("/proc/driver/nvidia"):
        return []  # no NVIDIA driver: TensorFlow would list no GPU
    import tensorflow as tf

    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        suffix = f", compute capability {capability[0]}.{capability[1]}" if capability else ""
        names.append(f"{details.get('device_name', gpu.name)}{suffix}")
    return names


def describe() -> str:
    """One or two lines: the CPU, its vector extensions (present and absent), the cores, the GPUs, TensorFlow."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tensorflow = version("tensorflow")
    except PackageNotFoundError:
        tensorflow = version("tensorflow-cpu")
    model, flags = cpu_info()
    present = [flag for flag in VECTOR_FLAGS if flag in flags]
    absent = [flag for flag in VECTOR_FLAGS if flag not in flags]
    extensions = ", ".join(present) or "none of " + " ".join(VECTOR_FLAGS)
    if flags and absent:
        extensions += f" (no {', '.join(absent)})"
    gpus = gpu_names()
    lines = [
        f"CPU: {model}, {cores()} cores usable, vector extensions: {extensions}",
        f"GPU: {'; '.join(gpus) if gpus else 'none'}; TensorFlow {tensorflow}, oneDNN "
        f"{'on' if os.environ.get('TF_ENABLE_ONEDNN_OPTS', '1') != '0' else 'off (TF_ENABLE_ONEDNN_OPTS=0)'}",
    ]
    return "\n".join(lines)


def has_native_bfloat16() -> bool:
    """Whether bfloat16 products run in hardware: a GPU, or a CPU with AVX512_BF16 or AMX."""
    _, flags = cpu_info()
    return bool(gpu_names()) or bool(flags & {"avx512_bf16", "amx_bf16"})


if __name__ == "__main__":
    print(describe())
