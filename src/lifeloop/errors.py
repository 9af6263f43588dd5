"""The root of lifeloop's exception tree.

    LifeloopError
    ├── DataError              (lifeloop.retrain)      bad image folders
    ├── CheckpointError        (lifeloop.export)       missing, corrupt, mismatched checkpoints
    ├── ExportError            (lifeloop.export)       unknown architecture, failed export
    │   └── ParityError                                ONNX disagrees with PyTorch
    ├── RepositoryError        (lifeloop.repository)   bad repository paths, configs, manifests
    │   ├── VersionExistsError
    │   └── ManifestMismatchError                      files differ from their manifest
    ├── ServerError            (lifeloop.serve)        tritonserver would not start or stop
    └── ClientError            (lifeloop.client)       unreachable server, unknown model, bad input

Every message is one line that names the thing at fault and the fix; the CLI prints it as is.
"""


class LifeloopError(Exception):
    """Base of every error lifeloop raises on purpose."""
