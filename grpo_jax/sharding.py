"""Device mesh, parameter shardings (FSDP) and batch shardings.

Mesh: two axes ("data", "fsdp"). FSDP is data parallel too, so the batch's leading dimension is
sharded over both axes; parameters are sharded over "fsdp" only (each >= 2-D array along its largest
dimension divisible by the fsdp size; 1-D arrays and arrays with no divisible dimension replicated).

Mesh mode: Auto axes (classic GSPMD), decided here once. jax.make_mesh now defaults to Explicit axes,
under which every mixed-sharding matmul needs an explicit reshard and jit(init) needs jax.set_mesh.
With Auto axes the code stays sharding-agnostic: we annotate inputs/outputs (params created with
out_shardings, batches device_put with batch_sharding) and XLA's propagation inserts the
all-gathers/reduce-scatters, so the same model code runs on one device or a mesh.
"""
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from grpo_jax import model as model_lib

BATCH_AXES = ("data", "fsdp")


def make_mesh(*, data: int, fsdp: int, devices=None) -> Mesh:
    """A (data, fsdp) mesh with Auto axes over `devices` (default: all of jax.devices())."""
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or fsdp < 1 or data * fsdp != len(devices):
        raise ValueError(
            f"mesh.data={data} x mesh.fsdp={fsdp} = {data * fsdp} must equal the device count "
            f"{len(devices)}"
        )
    return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def _param_spec(shape, fsdp_size: int) -> PartitionSpec:
    if len(shape) < 2:
        return PartitionSpec()
    divisible = [d for d in range(len(shape)) if shape[d] % fsdp_size == 0]
    if not divisible:
        return PartitionSpec()
    dim = max(divisible, key=lambda d: shape[d])  # largest divisible dim (first one on ties)
    return PartitionSpec(*[("fsdp" if d == dim else None) for d in range(len(shape))])


def param_shardings(mesh: Mesh, params):
    """Pytree of NamedSharding matching `params` (arrays or jax.ShapeDtypeStruct leaves)."""
    fsdp_size = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, _param_spec(x.shape, fsdp_size)), params)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dim over ("data", "fsdp"), the other ndim - 1 dims replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def init_params_sharded(config: model_lib.ModelConfig, key: jax.Array, mesh: Mesh):
    """model.init_params, created already sharded (no full copy on one device); same values."""

    def init(k):
        return model_lib.init_params(config, k)

    abstract = jax.eval_shape(init, key)
    return jax.jit(init, out_shardings=param_shardings(mesh, abstract))(key)
