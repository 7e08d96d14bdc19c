"""fastrnn's kernels behind PyTorch's RNN modules: ``fastrnn.torch.RNN / LSTM / GRU`` take the
arguments of ``torch.nn.RNN / LSTM / GRU`` and give their numbers, with autograd,
PackedSequence, torch.compile and DistributedDataParallel; ``convert(model)`` swaps them into
an existing model.

    modules.py    the modules and ``convert``: torch parameters plus one custom-op call
    ops.py        the custom ops ``fastrnn::stack_forward`` / ``stack_backward`` around stack.py,
                  their fake implementations, autograd and the registry of saved states
    devices.py    CPU tensors <-> NumPy (Numba), CUDA tensors <-> CuPy (DLPack), threads
    reference.py  the stack in torch operations, for higher-order gradients

Importing this package imports torch; ``import fastrnn`` alone does not.
"""

from .modules import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM, convert

__all__ = ["RNN", "LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU", "convert"]
