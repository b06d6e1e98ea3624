"""TFLite's fused LSTM kernel through onnx2tf: an ONNX `LSTM` becomes one UNIDIRECTIONAL_SEQUENCE_LSTM operator.

onnx2tf writes an ONNX LSTM as a Keras RNN over its own cell: a TensorFlow while loop whose TensorList ops the
TFLite converter cannot lower, so the route used to end unrolled over the sequence (one slice, four matmuls and
their gates per step: 1,447 operators for a 27 k-parameter sensor model over 90 frames, 3× its size). TensorFlow's
converter fuses exactly one LSTM form into its sequence kernel: a `tf_keras.layers.LSTM` (its function carries
`api_implements: lstm_…`) at a static batch. While onnx2tf converts, `fused_lstm` hands it such a layer, holding
the ONNX node's weights (gates reordered i, f, c, o as Keras keeps them), for every LSTM node of the plain form —
forward, the default activations, no peepholes, clip, coupled input-forget gate or sequence lengths; any other
keeps onnx2tf's own cell. The SavedModel step then fixes the batch at 1 (`static_batch`), where the converter
fuses it. Where the converter refuses the fused op after all, the unrolled route (`switch onnx2tf rnn-unroll`)
still answers: it turns this off.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

#: The ONNX LSTM activations that match Keras's (sigmoid gates, tanh cell and output).
DEFAULT_ACTIVATIONS: tuple[list[str], ...] = ([], ["Sigmoid", "Tanh", "Tanh"])


def _plain(attrs: dict[str, Any], inputs: list[str]) -> bool:
    """Whether an LSTM node (its attributes as Python values, its input names) is of the form Keras computes."""
    activations = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations") or []]
    direction = attrs.get("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    optional = inputs[4:5] + inputs[7:8]  # sequence_lens, peepholes
    return (direction == "forward" and activations in DEFAULT_ACTIVATIONS and attrs.get("clip") is None
            and not attrs.get("input_forget", 0) and not any(optional))


@contextmanager
def fused_lstm() -> Iterator[list[str]]:
    """While onnx2tf converts, its plain LSTM nodes become tf_keras LSTM layers; yields the names of those it made
    so (as onnx2tf names them)."""
    import onnx2tf.ops.LSTM as lstm_op

    make_node, layer = lstm_op.make_node, lstm_op.CustomLSTM
    fused: list[str] = []
    current: list[str] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        node = kwargs.get("graph_node")
        inputs = [getattr(i, "name", "") for i in getattr(node, "inputs", [])]
        current[:] = [node.name] if node is not None and _plain(dict(node.attrs), inputs) else []
        try:
            return make_node(*args, **kwargs)
        finally:
            current.clear()

    def lstm(*args: Any, **kwargs: Any) -> Any:
        if not current or args or kwargs.get("enable_rnn_unroll") or kwargs.get("go_backwards"):
            lstm_op.CustomLSTM = layer  # its __init__ names its own class
            try:
                return layer(*args, **kwargs)
            finally:
                lstm_op.CustomLSTM = lstm
        fused.append(current[0])
        return _KerasLstm(**kwargs)

    lstm_op.make_node, lstm_op.CustomLSTM = make, lstm
    try:
        yield fused
    finally:
        lstm_op.make_node, lstm_op.CustomLSTM = make_node, layer


class _KerasLstm:
    """A tf_keras LSTM holding onnx2tf's weights for one node, called as onnx2tf calls its own layer."""

    def __init__(self, hidden_size: int, kernel: Any, recurrent_kernel: Any, bias_i: Any, bias_f: Any, bias_c: Any,
                 bias_o: Any, **_: Any):
        import tensorflow as tf
        import tf_keras

        bias = tf.concat([tf.reshape(b, [-1]) for b in (bias_i, bias_f, bias_c, bias_o)], axis=0).numpy()
        constant = tf_keras.initializers.Constant
        self.layer = tf_keras.layers.LSTM(
            hidden_size, return_sequences=True, return_state=True, unit_forget_bias=False,
            kernel_initializer=constant(kernel.numpy()), recurrent_initializer=constant(recurrent_kernel.numpy()),
            bias_initializer=constant(bias))

    def __call__(self, inputs: Any, initial_state: Any = None) -> Any:
        state = list(initial_state or [])  # onnx2tf passes [] for none
        if state and all(_zeros(s) for s in state):
            state = []  # the exporter's zero state, a constant at a static batch: Keras's own initial state
        return self.layer(inputs, initial_state=state or None)


def _zeros(state: Any) -> bool:
    """Whether an initial state onnx2tf computed is a constant of zeros (the exporter's Expand of zeros to the
    batch: a constant once the batch is static, which the Keras layer cannot take as a Functional model's input)."""
    import numpy as np
    import tf_keras

    if tf_keras.backend.is_keras_tensor(state):
        return False
    try:
        return not np.asarray(state).any()
    except Exception:  # noqa: BLE001 - a symbolic tensor: not a constant
        return False
