"""MicroBatcher on the real exported runtime: how it forms batches while inference is busy."""

import asyncio
import threading

import numpy as np

from model.manifest import Manifest
from model.runtime import TokenizerRuntime
from service.batcher import MicroBatcher, WindowJob
from service.metrics import ServiceMetrics


class GatedBatcher(MicroBatcher):
    """Records each batch's size; inference of the first batch waits until the test opens the gate."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sizes: list[int] = []
        self.gate = threading.Event()

    def _run(self, prepared):
        self.sizes.append(len(prepared.jobs))
        if len(self.sizes) == 1:
            self.gate.wait(30)
        return super()._run(prepared)


def test_windows_that_arrive_while_inference_is_busy_go_out_in_one_batch(trained_dir):
    """A batch is formed when inference takes the one before it, not as soon as its first window arrives: windows
    trickling in during a long run wait together (what keeps batches large under load)."""
    out, _, _ = trained_dir
    manifest = Manifest.load(out)
    runtime = TokenizerRuntime(out, manifest, providers="cpu")
    text = manifest.sources.index("purchases")

    async def scenario():
        b = GatedBatcher(runtime, ServiceMetrics(), max_batch_size=64, max_wait_ms=5)
        await b.start()
        first = asyncio.create_task(b.submit([WindowJob(text, text="milk x2")]))
        while not b.sizes:  # the first batch is in inference, held at the gate
            await asyncio.sleep(0.005)
        second = asyncio.create_task(b.submit([WindowJob(text, text="bread")]))
        await asyncio.sleep(0.05)  # prepared ahead, alone: nothing else had arrived
        trickle = []
        for i in range(10):  # one window every 20 ms: each past the 5 ms a batch waits for company
            trickle.append(asyncio.create_task(b.submit([WindowJob(text, text=f"item {i}")])))
            await asyncio.sleep(0.02)
        b.gate.set()
        codes = await asyncio.gather(first, second, *trickle)
        await b.stop()
        return b.sizes, codes

    sizes, codes = asyncio.run(scenario())
    assert sizes == [1, 1, 10]
    assert all(c.shape == (1, manifest.quantizer.shared_levels + manifest.quantizer.specific_levels) for c in codes)
    # the same window gets the same codes whichever batch it rode in
    alone = asyncio.run(_codes_alone(runtime, WindowJob(text, text="item 3")))
    assert np.array_equal(codes[2 + 3], alone)


async def _codes_alone(runtime, job):
    b = MicroBatcher(runtime, ServiceMetrics(), max_batch_size=1)
    await b.start()
    try:
        return await b.submit([job])
    finally:
        await b.stop()
