"""Recurrent layers for ExecuTorch: aten.lstm, aten.gru and aten.rnn_* as torch scan loops, and XNNPACK inside
loop bodies.

ExecuTorch's to_edge decomposes `aten.lstm` (and `aten.gru`, `aten.rnn_tanh`, `aten.rnn_relu`) into a fully
unrolled graph (timesteps x layers x ~12 nodes: 10,142 nodes for a 3-layer LSTM over 160 frames). Its chunk
(split_with_sizes_copy), squeeze and select ops are not XNNPACK-partitionable, so every timestep of every layer
becomes its own delegate (~3 per step), and to_backend's per-partition work (partition merging, and
create_submodule_from_nodes' legalize_graph over the whole graph) is O(partitions x nodes): the
lowering is quadratic in the sequence length (3-layer LSTM-256: 48 s at T=20, 107 s at T=40,
364 s at T=80, > 11 min at T=160; a 2-layer bidirectional GRU-16 over 90 steps: 283 s).

`recurrent_to_scan` rewrites each `aten.lstm.input`, `aten.gru.input`, `aten.rnn_tanh.input` and
`aten.rnn_relu.input` node of a GraphModule (what `torch.export.load(pt2).module()` and `convert_pt2e` return;
torch.export keeps nn.LSTM / nn.GRU / nn.RNN as this one node) into the same computation with
`torch._higher_order_ops.scan`: per layer and direction one matmul projects every timestep's input
(x @ W_ih^T + b_ih, plus b_hh where it is added outside the gates), then the scan body does h @ W_hh^T and the
gates. ExecuTorch 1.5 emits scan as a loop, so the graph no longer grows with the sequence length. Weights are
the model's own (W_hh stored transposed); numerics match PyTorch's kernels to ~1e-7.

`ControlFlowXnnpackPartitioner` is XnnpackPartitioner that also tags the nodes of control-flow
bodies (to_backend already lowers tagged nodes inside scan/cond/map bodies; the stock partitioner
only looks at the top-level graph). In a body the weights are body inputs, not static params, so
bodies are partitioned with force_non_static_weights_for_f32_linear=True. For programs without
control flow it tags exactly what XnnpackPartitioner tags (byte-identical .pte).
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    """A recurrent layer's ATen op as the scan loop needs it: whether it carries a cell state, whether W_hh's bias
    may be summed into the input projection (not GRU's: its candidate multiplies r by W_hn h + b_hn)."""

    op: str
    cell_state: bool
    sum_biases: bool


KINDS = (Kind("lstm", True, True), Kind("gru", False, False), Kind("rnn_tanh", False, True),
         Kind("rnn_relu", False, True))


def _step(kind: str, gx: Any, gh: Any, h: Any, c: Any, hidden: int) -> tuple[Any, Any]:
    """One timestep's (h, c) from the input's projection gx and the hidden state's gh = h @ W_hh^T (+ b_hh), in
    PyTorch's gate order (LSTM i, f, g, o; GRU r, z, n); c is None for the layers without a cell state. `hidden` is
    the weights' (a Python int): a size read from the carry may be symbolic when TorchDynamo traces the loop body
    again with automatic dynamic shapes, and scan refuses a body whose slice bounds are expressions of it."""
    import torch

    if kind == "lstm":
        g = gx + gh
        i = torch.sigmoid(g[:, 0:hidden])
        f = torch.sigmoid(g[:, hidden:2 * hidden])
        cand = torch.tanh(g[:, 2 * hidden:3 * hidden])
        o = torch.sigmoid(g[:, 3 * hidden:4 * hidden])
        c = f * c + i * cand
        return o * torch.tanh(c), c
    if kind == "gru":
        r = torch.sigmoid(gx[:, 0:hidden] + gh[:, 0:hidden])
        z = torch.sigmoid(gx[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
        n = torch.tanh(gx[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
        return (1 - z) * n + z * h, None
    pre = gx + gh
    return (torch.tanh(pre) if kind == "rnn_tanh" else torch.relu(pre)), None


def _direction(kind: str, x_tbf: Any, h0: Any, c0: Any, w_ih: Any, w_hh_t: Any, bias_x: Any, bias_h: Any,
               reverse: bool) -> tuple[Any, Any, Any]:
    """One layer, one direction over x [T, B, F]; w_hh_t is W_hh^T [H, gates·H]. Returns ys [T, B, H], h_T, c_T
    (c0 and c_T None for the layers without a cell state: a carry returned unchanged would alias its input,
    which scan refuses)."""
    import torch
    from torch._higher_order_ops.scan import scan

    hidden = int(w_hh_t.shape[0])
    gx = torch.nn.functional.linear(x_tbf, w_ih, bias_x)  # every timestep's input projection: one matmul

    def step(carry: Any, g_t: Any) -> tuple[Any, Any]:
        h = carry[0]
        gh = torch.mm(h, w_hh_t) if bias_h is None else torch.mm(h, w_hh_t) + bias_h
        h, c = _step(kind, g_t, gh, h, carry[1] if len(carry) > 1 else None, hidden)
        return ((h, c) if c is not None else (h,)), h.clone()  # a scan output must not alias the carry

    final, ys = scan(step, (h0, c0) if c0 is not None else (h0,), gx, reverse=reverse)
    return ys, final[0], (final[1] if c0 is not None else None)


def scan_recurrent(kind: str, x: Any, h0: Any, c0: Any, layers: list[tuple[Any, Any, Any, Any]], batch_first: bool,
                   bidirectional: bool) -> tuple[Any, ...]:
    """The op's outputs: (output, h_n, c_n) for lstm, (output, h_n) for the others; `layers` holds (W_ih, W_hh^T,
    the input projection's bias, the hidden projection's bias; None where absent) per layer and direction."""
    import torch

    x = x.transpose(0, 1) if batch_first else x  # [T, B, F]
    dirs = 2 if bidirectional else 1
    hs, cs = [], []
    for layer in range(len(layers) // dirs):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w_ih, w_hh_t, bias_x, bias_h = layers[k]
            ys, h, c = _direction(kind, x, h0[k], None if c0 is None else c0[k], w_ih, w_hh_t, bias_x, bias_h,
                                  reverse=d == 1)
            outs.append(ys)
            hs.append(h)
            cs.append(c)
        x = outs[0] if dirs == 1 else torch.cat(outs, dim=-1)
    out = x.transpose(0, 1) if batch_first else x
    return (out, torch.stack(hs, 0), torch.stack(cs, 0)) if c0 is not None else (out, torch.stack(hs, 0))


def _attr(module: Any, target: str) -> Any:
    for part in target.split("."):
        module = getattr(module, part)
    return module


def recurrent_to_scan(gm: Any) -> int:
    """Rewrite every supported aten.lstm / gru / rnn_tanh / rnn_relu `.input` node of GraphModule `gm` in place;
    returns how many.

    Supported: any num_layers, bidirectional, with or without biases, batch_first or not, inference
    (train=False), weights that are attributes of `gm`. Others (proj_size, train=True) are left as they are.
    """
    import torch

    ops = {getattr(torch.ops.aten, k.op).input: k for k in KINDS}
    count = 0
    replaced: set[str] = set()  # get_attr targets of the weights moved into the new buffers
    for node in list(gm.graph.nodes):
        kind = ops.get(node.target) if node.op == "call_function" else None
        if kind is None:
            continue
        x, hx, params, has_biases, num_layers, _dropout, train, bidirectional, batch_first = node.args
        dirs = 2 if bidirectional else 1
        per = 4 if has_biases else 2
        if train or len(params) != num_layers * dirs * per or not all(p.op == "get_attr" for p in params):
            continue
        layers = []
        with gm.graph.inserting_before(node):
            for k in range(num_layers * dirs):
                p_ih, p_hh, *p_bias = params[k * per:(k + 1) * per]
                extra = {"w_hh_t": _attr(gm, p_hh.target).detach().t().contiguous()}
                if p_bias and kind.sum_biases:
                    extra["bias_x"] = (_attr(gm, p_bias[0].target) + _attr(gm, p_bias[1].target)).detach()
                elif p_bias:  # W_ih's bias on the input projection, W_hh's on the hidden one
                    extra["bias_x"] = _attr(gm, p_bias[0].target).detach()
                    extra["bias_h"] = _attr(gm, p_bias[1].target).detach()
                refs = {}
                for suffix, tensor in extra.items():
                    name = f"_scan_{kind.op}{count}_{k}_{suffix}"
                    gm.register_buffer(name, tensor)
                    refs[suffix] = gm.graph.get_attr(name)
                layers.append((p_ih, refs["w_hh_t"], refs.get("bias_x"), refs.get("bias_h")))
                replaced.update(p.target for p in (p_hh, *p_bias))
            h0, c0 = (hx[0], hx[1]) if kind.cell_state else (hx, None)
            new = gm.graph.call_function(scan_recurrent, (kind.op, x, h0, c0, layers, batch_first, bidirectional))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
        for target in replaced - used:  # W_hh and the biases now live in the new buffers: do not ship them twice
            *path, leaf = target.split(".")
            delattr(_attr(gm, ".".join(path)) if path else gm, leaf)
        gm.delete_all_unused_submodules()
        gm.recompile()
    return count


def control_flow_xnnpack_partitioner() -> Any:
    """An XnnpackPartitioner that also delegates the bodies of scan/cond/map (see the module docstring)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir.backend.partitioner import PartitionResult
    from executorch.exir.graph_module import get_control_flow_submodules

    class ControlFlowXnnpackPartitioner(XnnpackPartitioner):
        def __init__(self) -> None:
            super().__init__()
            self._body = XnnpackPartitioner(force_non_static_weights_for_f32_linear=True)

        def partition(self, exported_program: Any) -> Any:
            result = super().partition(exported_program)
            tags = dict(result.partition_tags)
            bodies = []

            def collect(gm: Any) -> None:
                for _, sub, _ in get_control_flow_submodules(gm):
                    bodies.append(sub)
                    collect(sub)

            collect(exported_program.graph_module)
            for i, body in enumerate(bodies):
                view = types.SimpleNamespace(  # what the XNNPACK configs read from an ExportedProgram
                    graph_module=body, graph=body.graph, graph_signature=exported_program.graph_signature,
                    state_dict=exported_program.state_dict, constants=exported_program.constants)
                try:
                    partitions = self._body.generate_partitions(view)
                except Exception as exc:  # the body then runs on portable kernels: slower, still correct
                    logger.warning("XNNPACK partitioning of control-flow body %d failed (%s); it stays portable", i, exc)
                    continue
                for j, part in enumerate(partitions):
                    tag = f"body{i}_tag{j}"
                    for node in part.nodes:
                        # XNNPACK drops clones; a body's `y = h.clone()` would then make one delegate
                        # output appear twice (carry and y), which the delegate rejects: keep clones out.
                        if "clone" not in str(node.target):
                            node.meta["delegation_tag"] = tag
                    tags[tag] = self.delegation_spec
            return PartitionResult(tagged_exported_program=result.tagged_exported_program, partition_tags=tags)

    return ControlFlowXnnpackPartitioner()
