"""The Triton kernels by name (imports Triton)."""

import triton

from .kernel_dkdv import dkdv_kernel, dkdv_reduce_kernel
from .kernel_dq import dq_kernel
from .kernel_fwd import fwd_kernel

__all__ = ["KERNELS", "interpreting"]

KERNELS = {
    "fwd": fwd_kernel,
    "bwd_dq": dq_kernel,
    "bwd_dkdv": dkdv_kernel,
    "bwd_dkdv_reduce": dkdv_reduce_kernel,
}


def interpreting() -> bool:
    """True when the kernels run in the Triton CPU interpreter (``TRITON_INTERPRET=1``)."""
    return not isinstance(fwd_kernel, triton.runtime.jit.JITFunction)
