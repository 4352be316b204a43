"""PyInstaller runtime hook: let torchvision import without its compiled operators.

When the CPU build of torch is paired with a torchvision wheel compiled against CUDA
torch (PyPI's Linux wheels are), torchvision's C++ extension cannot load, and
torchvision 0.28 then fails at import: it registers fake kernels for the operators
`torchvision::nms` and `torchvision::qnms` without checking that they exist. Declaring
the two schemas first lets it import. ATL Desktop uses only torchvision's classifier
architectures and transforms, which are pure Python; calling nms itself would fail
with a clear "no kernel" error. When the extension loads (a matching torchvision),
this hook changes nothing.
"""


def _declare_missing_torchvision_ops() -> None:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("torchvision")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return
    import torch

    folder = Path(next(iter(spec.submodule_search_locations)))
    for extension in sorted(folder.glob("_C*")):
        try:
            torch.ops.load_library(str(extension))
            return  # the real operators are there
        except (OSError, ImportError, RuntimeError):
            pass
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    torch._atl_torchvision_schemas = library  # the definitions live as long as this object


_declare_missing_torchvision_ops()
