"""effadam from Python: the C++ worker library and codecs, bound with
pybind11 (nothing is implemented twice).

    import effadam
    layout = effadam.TensorLayout([("w", (1024,)), ("b", (1,))])
    client = effadam.WorkerClient(server="127.0.0.1:50051",
                                  compression=effadam.CompressionConfig())

The PyTorch optimizers are effadam.optim.EfficientAdam and EfficientAdamW
(import torch); `python3 -m effadam.run --nproc=N -- train.py` launches a
server and N workers. docs/python.md describes the API.
"""

from ._effadam import (  # noqa: F401
    AdamOptions,
    ClientSecurity,
    Codec,
    CompressionConfig,
    DirectionBytes,
    InvalidArgumentError,
    StatusCode,
    StatusError,
    TensorLayout,
    Traffic,
    UpdateCodec,
    WorkerClient,
    WorkerPlacement,
    check_world_size,
    load_idx_dataset,
    params_checksum,
    resolve_placement,
)

__all__ = [
    "AdamOptions", "ClientSecurity", "Codec", "CompressionConfig",
    "DirectionBytes", "InvalidArgumentError", "StatusCode", "StatusError",
    "TensorLayout", "Traffic", "UpdateCodec", "WorkerClient", "WorkerPlacement",
    "check_world_size", "load_idx_dataset", "params_checksum",
    "resolve_placement",
]
