"""The torch half of the asynchronous hook: host buffers and copies.

On CUDA a copy goes to pinned host memory on a side stream that first waits
for the model's stream, so the model never waits for it; the source tensor
is marked as used by the side stream (``record_stream``) so the caching
allocator does not hand its memory to the model before the copy has read
it. At the end of a step one event per device marks the copies; the writer
thread waits on those events, never the model's thread. CPU tensors take
the same path with a plain copy and no event.
"""

import ctypes

import torch

from .writer import Chunk

# torch dtype -> safetensors dtype name
ST_NAME = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.uint8: "U8",
    torch.int8: "I8",
}


class Copier:
    def __init__(self):
        self.pin = torch.cuda.is_available()
        self.streams = {}
        self.used = set()

    def alloc(self, nbytes):
        """A host chunk of ``nbytes``: pinned when CUDA is present (an
        asynchronous device-to-host copy needs pinned memory)."""
        t = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=self.pin)
        # the writer reads the bytes through a memoryview of the same memory
        mem = (ctypes.c_ubyte * t.numel()).from_address(t.data_ptr())
        return Chunk(t, mem)

    def copy(self, src, chunk, start):
        """Copy tensor ``src`` into ``chunk`` at byte ``start`` (reserved by
        the caller, ``src.numel() * src.element_size()`` bytes)."""
        src = src.detach()
        if not src.is_contiguous():
            src = src.contiguous()
        n = src.numel() * src.element_size()
        dst = chunk.buf[start:start + n].view(src.dtype).view(src.shape)
        if src.is_cuda:
            dev = src.device
            side = self.streams.get(dev)
            if side is None:
                side = self.streams[dev] = torch.cuda.Stream(device=dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                dst.copy_(src, non_blocking=True)
            src.record_stream(side)
            self.used.add(dev)
        else:
            dst.copy_(src)

    def events(self):
        """One recorded event per device with copies since the last call."""
        out = []
        for dev in self.used:
            ev = torch.cuda.Event()
            ev.record(self.streams[dev])
            out.append(ev)
        self.used = set()
        return out


def step_counts_add(acc, ids, num_experts):
    """acc[e] += number of times expert e appears in ``ids``, on the device
    of ``ids`` and without a host sync (``bincount`` reads the maximum back
    to the host; ``scatter_add_`` does not)."""
    flat = ids.reshape(-1).long()
    if acc is None:
        acc = torch.zeros(num_experts, dtype=torch.int64, device=flat.device)
    acc.scatter_add_(0, flat, torch.ones_like(flat))
    return acc


def topk_ids(logits, top_k, routing):
    """The experts a routing function picks, computed from the logits on
    their device (used only when the model does not expose its choice)."""
    kind = routing.get("kind")
    if kind in ("softmax_topk", "topk_softmax"):
        # softmax is monotonic: top-k of the probabilities = top-k of the logits
        return logits.topk(top_k, dim=-1).indices
    raise NotImplementedError(
        f"llep_capture: counts mode needs the model's chosen ids for routing '{kind}' "
        "(its router output or experts input did not expose them); use mode='async'")
