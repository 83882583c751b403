"""Which JAX backends a program starts: no TPU runtime on a machine without TPU chips.

With `JAX_PLATFORMS` unset, JAX initialises every backend it has a factory for and keeps those that
come up. Its TPU factory loads libtpu whenever the `libtpu` wheel is importable (grpo_jax's `tpu` and
`test` extras install it, for `grpo_jax.plan`'s TPU topologies), and on a machine without TPU chips
libtpu prints "could not determine TPU worker hostnames ..." / "Failed to find host bounds ..." errors
to stderr before JAX quietly gives up on it and falls back to the CPU (or GPU). Every CPU command
that starts JAX's backends printed them (--help starts none); while another process holds libtpu's
lock file it fails without printing, but is loaded all the same.

`skip_absent_tpu()`, called first by each program's `main`, swaps JAX's TPU backend factory for one
that declines without loading libtpu, before any backend starts (the "tpu" platform stays registered:
Pallas and checkify register TPU lowerings at import). It follows the rule JAX itself applies to CUDA
(`xla_bridge.backends` skips "cuda" when no NVIDIA device node exists), and acts only when there is no
TPU chip on the PCI bus (`hardware_utils.num_available_tpu_chips_and_device_id`, the check
`jax.cloud_tpu_init` makes) and no TPU device node (/dev/accel*: v2-v5e; /dev/vfio: v5p, v6e), nobody chose the platforms (`JAX_PLATFORMS` unset, `jax_platforms`
unset: on a Cloud TPU VM jax's own import sets it to "tpu,cpu") and nobody forces the TPU runtime
(`JAX_FORCE_TPU_INIT`). A real TPU VM therefore still finds its TPU by default. `grpo_jax.plan`'s TPU
topologies load libtpu through `jax.experimental.topologies`, not through the backend factory, and
keep working (checked: `plan --topology v5e-4` compiles and fits with the factory declined).
"""
from __future__ import annotations

import glob
import os


def tpu_chips() -> int:
    """TPU chips on this machine's PCI bus (as JAX counts them); 0 when that cannot be told."""
    try:
        from jax._src import hardware_utils
        return int(hardware_utils.num_available_tpu_chips_and_device_id()[0])
    except Exception:  # noqa: BLE001  (a private API: if it moved, say "unknown" = none seen)
        return 0


def may_have_tpu() -> bool:
    """Whether this machine may have a TPU: chips on the PCI bus, or TPU device nodes (a container
    may show those without the PCI tree)."""
    return tpu_chips() > 0 or bool(glob.glob("/dev/accel*")) or os.path.exists("/dev/vfio")


SKIPPED = ("no TPU chip on this machine, so grpo_jax did not load libtpu (set JAX_PLATFORMS=tpu or "
           "JAX_FORCE_TPU_INIT=1 to try anyway)")


def _declined():
    raise RuntimeError(SKIPPED)  # JAX logs it at INFO level and goes on with the other backends


def skip_absent_tpu() -> bool:
    """Makes JAX's TPU backend decline without loading libtpu when this machine has no TPU and no one
    asked for one (module docstring); returns whether it did. A no-op once the backends have started."""
    import jax

    if ("JAX_PLATFORMS" in os.environ or jax.config.jax_platforms or "JAX_FORCE_TPU_INIT" in os.environ
            or may_have_tpu()):
        return False
    try:
        from jax._src import xla_bridge
        registration = xla_bridge._backend_factories.get("tpu")
        if registration is None or xla_bridge.backends_are_initialized():
            return False
        registration.factory = _declined
        return True
    except Exception:  # noqa: BLE001  (a private API: if it moved, JAX behaves as it always did)
        return False
