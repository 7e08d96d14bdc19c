"""fastrnn: fused forward and backward kernels for RNN, LSTM and GRU."""

from .api import (
    Context,
    Gradients,
    LSTMResult,
    RNNResult,
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
    training_memory,
)
from .cells import Cell, saved_bytes
from .dispatch import (
    BackendUnavailable,
    available_backends,
    get_backend,
    register_backend,
    use_backend,
)
from .layers import GRU, LSTM, RNN, LayerNormGRU, LayerNormLSTM
from .training import clip_grad_norm

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable", "Cell", "Context", "Gradients", "LSTMResult", "RNNResult",
    "available_backends", "get_backend", "gru_backward", "gru_forward", "lstm_backward",
    "lstm_forward", "register_backend", "rnn_backward", "rnn_forward", "saved_bytes",
    "training_memory", "use_backend",
    "RNN", "LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU", "clip_grad_norm", "set_num_threads", "get_num_threads",
]


def __getattr__(name):
    # set_num_threads / get_num_threads belong to the Numba backend, imported on first use so
    # that ``import fastrnn`` imports no kernels.
    if name in ("set_num_threads", "get_num_threads"):
        from .backends import numba_cpu

        return getattr(numba_cpu, name)
    raise AttributeError(f"module 'fastrnn' has no attribute {name!r}")
