"""Reference decoders of MIL's compressed-weight ops (constexpr_*) in NumPy: int8/int4 linear quantization, palettes, sparsity.

Written from the MIL op definitions, not by calling coremltools' own decoders, so a package whose
compressed weights coremltools wrote wrong (or whose bytes changed on disk) decodes to what the
bytes say; tests compare each decoder with coremltools' `materialized_val_inference`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildsys.formats.coreml.mil_registry import Args, const_value, op

if TYPE_CHECKING:
    import numpy as np
    from coremltools.converters.mil.mil import Operation

    Array = np.ndarray


def _along(vector: "Array", axis: int, rank: int) -> "Array":
    """A per-axis parameter (scale, zero point) shaped to broadcast along `axis` of a rank-`rank` tensor."""
    if vector.ndim == 0 or vector.size == 1:
        return vector.reshape(())
    return vector.reshape([-1 if i == axis % rank else 1 for i in range(rank)])


@op("constexpr_affine_dequantize")
def constexpr_affine_dequantize(a: Args) -> "Array":
    """iOS16 linear quantization: scale · (quantized_data − zero_point), per tensor or per `axis`."""
    import numpy as np

    data = a.tensor("quantized_data").astype(np.float32)
    axis = a.integer("axis", 0)
    scale = _along(a.tensor("scale").astype(np.float32), axis, data.ndim)
    zero = _along(a.tensor("zero_point").astype(np.float32), axis, data.ndim)
    return scale * (data - zero)


def _blocks(param: "Array", shape: tuple[int, ...]) -> "Array":
    """A per-block parameter repeated to the full shape (block size = shape // param.shape per axis)."""
    import numpy as np

    for axis, (full, part) in enumerate(zip(shape, param.shape)):
        if part != full:
            param = np.repeat(param, full // part, axis=axis)
    return param


@op("constexpr_blockwise_shift_scale")
def constexpr_blockwise_shift_scale(a: Args) -> "Array":
    """iOS18 block-wise quantization: scale[block] · (data − offset[block])."""
    import numpy as np

    data = a.tensor("data").astype(np.float32)
    scale = _blocks(a.tensor("scale").astype(np.float32), data.shape)
    if a.has("offset"):
        data = data - _blocks(a.tensor("offset").astype(np.float32), data.shape)
    return scale * data


def unpack_bits(packed: "Array", nbits: int, count: int) -> "Array":
    """`count` nbits-wide unsigned integers packed LSB first into bytes (MIL's iOS16 packing)."""
    import numpy as np

    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")[:count * nbits]
    weights = (1 << np.arange(nbits, dtype=np.uint32))
    return (bits.reshape(count, nbits).astype(np.uint32) * weights).sum(axis=1)


def _lut_variant(operation: "Operation") -> str | None:
    if "shape" in operation.inputs:
        return None  # iOS16: one palette per tensor
    vector = const_value(operation, "lut")
    if vector is not None and getattr(vector, "shape", (1,))[-1] != 1 and const_value(operation, "vector_axis") is None:
        return "constexpr_lut_to_dense with vectors but no vector_axis"
    return None


@op("constexpr_lut_to_dense", refuse=_lut_variant)
def constexpr_lut_to_dense(a: Args) -> "Array":
    """Palettized weights. iOS16: one palette `lut` of 2^n values, indices bit-packed into bytes.
    iOS18: `lut` has shape [*blocks, 2^n, vector_size] (a palette per block of the indices' axes,
    each entry a vector laid along `vector_axis`); indices come one per element."""
    import numpy as np

    lut = a.tensor("lut")
    if a.has("shape"):
        shape = a.integers("shape")
        count = int(np.prod(shape))
        nbits = int(np.log2(lut.shape[0]))
        return lut[unpack_bits(a.tensor("indices"), nbits, count)].reshape(shape)
    indices = a.tensor("indices").astype(np.int64)
    rank = indices.ndim
    vector = lut.shape[-1]
    # which palette each element uses: its block's, found by integer division of its position
    block_index = tuple(
        (np.arange(size) // (size // blocks)).reshape([-1 if i == axis else 1 for i in range(rank)])
        for axis, (size, blocks) in enumerate(zip(indices.shape, lut.shape[:rank])))
    picked = lut[(*block_index, indices)]  # [*indices.shape, vector]
    if vector == 1:
        return picked[..., 0]
    axis = a.integer("vector_axis") % rank
    moved = np.moveaxis(picked, -1, axis + 1)  # the vector right after its axis
    shape = list(indices.shape)
    shape[axis] *= vector
    return moved.reshape(shape)


@op("constexpr_sparse_to_dense")
def constexpr_sparse_to_dense(a: Args) -> "Array":
    """Sparse weights: the non-zero values in row-major order where the mask has a 1, zeros elsewhere.
    iOS16 packs the mask into bytes (LSB first) and gives the shape; iOS18 gives it one bit per element."""
    import numpy as np

    values = a.tensor("nonzero_data")
    if a.has("shape"):
        shape = a.integers("shape")
        mask = unpack_bits(a.tensor("mask"), 1, int(np.prod(shape))).astype(bool).reshape(shape)
    else:
        mask = a.tensor("mask").astype(bool)
    dense = np.zeros(mask.shape, dtype=values.dtype)
    dense[mask] = values
    return dense


@op("constexpr_cast")
def constexpr_cast(a: Args) -> "Array":
    """A weight stored in one float type and used in another; the interpreter's rounding is the cast."""
    return a.tensor("source_val")
