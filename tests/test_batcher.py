"""MicroBatcher: a window's tokens do not depend on how the service schedules the encoder."""

import asyncio

import numpy as np
import pytest

from model.runtime import TokenizerRuntime
from service.batcher import MicroBatcher, WindowJob
from service.metrics import ServiceMetrics
from training.corpus import build_corpus


@pytest.fixture(scope="module")
def jobs(cj_events, trained_dir):
    """Real windows of a few households, text and tabular, as the service queues them."""
    events, sources = cj_events
    corpus = build_corpus(events[events["user_id"].isin(events["user_id"].unique()[:6])], sources, progress=False)
    w = corpus.windows
    out = []
    for i, (text, src) in enumerate(zip(w["text"], w["source_index"], strict=True)):
        if text:
            out.append(WindowJob(int(src), text=text))
        else:
            out.append(WindowJob(int(src), features=corpus.features[w["source"].iloc[i]][i]))
    return out


def served_codes(runtime: TokenizerRuntime, jobs: list[WindowJob], **kw) -> np.ndarray:
    async def run():
        b = MicroBatcher(runtime, ServiceMetrics(), **kw)
        await b.start()
        try:  # several requests at once, so batches mix windows of several requests
            parts = await asyncio.gather(
                *(
                    b.submit([WindowJob(j.source_index, j.text, j.features) for j in jobs[k : k + 7]])
                    for k in range(0, len(jobs), 7)
                )
            )
        finally:
            await b.stop()
        return np.concatenate(parts)

    return asyncio.run(run())


def test_encoder_lanes_and_run_widths_give_the_tokens_of_one_run_at_a_time(jobs, trained_dir):
    assert sum(j.text is not None for j in jobs) > 50 and any(j.features is not None for j in jobs)
    one_lane = TokenizerRuntime(trained_dir[0], providers="cpu", lanes=1)
    lanes = TokenizerRuntime(trained_dir[0], providers="cpu", lanes=3)
    assert one_lane.lanes == 1 and lanes.lanes == 3
    reference = served_codes(one_lane, jobs, max_batch_size=64, text_chunk=64)
    assert reference.shape == (len(jobs), one_lane.vocabulary.levels)
    assert len({tuple(c) for c in reference}) > len(jobs) // 4  # real, varied codes, not a constant
    for runtime, width in ((lanes, 4), (lanes, 1), (one_lane, 4)):
        np.testing.assert_array_equal(served_codes(runtime, jobs, max_batch_size=64, text_chunk=width), reference)


def test_one_lane_per_core_is_the_cpu_default(trained_dir):
    import os

    rt = TokenizerRuntime(trained_dir[0], providers="cpu", lanes=0)
    assert rt.lanes == len(os.sched_getaffinity(0))
