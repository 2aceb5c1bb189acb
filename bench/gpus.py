"""The GPUs the cost model bounds against: dense bf16 tensor-core peak, memory bandwidth and memory (docs/scale.md)."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    name: str
    flops: float  # dense bf16 FLOP/s (tensor cores, no structured sparsity)
    bandwidth: float  # HBM bytes/s
    memory: float  # bytes

    def seconds(self, flops: float, nbytes: float) -> tuple[float, float]:
        """(seconds at peak FLOP/s, seconds at full bandwidth) for this much work."""
        return flops / self.flops, nbytes / self.bandwidth


GPUS = {
    # NVIDIA H100 Tensor Core GPU datasheet, SXM5 (https://www.nvidia.com/en-us/data-center/h100/): BF16 tensor core
    # 1,979 TFLOPS "with sparsity", so 989 dense; HBM3 3.35 TB/s; 80 GB.
    "h100": Gpu("H100 SXM", 989e12, 3.35e12, 80e9),
    # NVIDIA H200 product page and datasheet, SXM (https://www.nvidia.com/en-us/data-center/h200/): the same BF16
    # 1,979 TFLOPS with sparsity (989 dense); HBM3e 4.8 TB/s; 141 GB.
    "h200": Gpu("H200 SXM", 989e12, 4.8e12, 141e9),
}
