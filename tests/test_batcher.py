"""MicroBatcher on the real exported runtime: how it forms batches while inference is busy."""

import asyncio
import threading

import numpy as np

from u2qt.model.manifest import Manifest
from u2qt.model.runtime import TokenizerRuntime, length_runs
from u2qt.service.batcher import MicroBatcher, WindowJob
from u2qt.service.metrics import ServiceMetrics


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


def test_length_runs_cover_each_window_once_within_width_and_padding_budget():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = rng.integers(3, 129, size=rng.integers(1, 70))
        runs = length_runs(lengths, 8, 0.25)
        assert sorted(np.concatenate(runs).tolist()) == list(range(len(lengths)))
        for k, run in enumerate(runs):
            ls = lengths[run]
            assert 1 <= len(run) <= 8 and np.all(np.diff(ls) >= 0)
            assert len(run) * ls.max() <= 1.25 * ls.sum()  # padding at most 25% of the real tokens
            if k + 1 < len(runs) and len(run) < 8:  # cut only where the next window would break the budget
                nxt = lengths[runs[k + 1][0]]
                assert (len(run) + 1) * nxt > 1.25 * (ls.sum() + nxt)
        fixed = length_runs(lengths, 4)
        assert [len(r) for r in fixed[:-1]] == [4] * (len(fixed) - 1)


def test_a_window_gets_the_same_codes_in_a_batch_of_mixed_lengths_as_alone(trained_dir):
    """The CPU rule (length runs cut at 25% padding) changes which windows share an encoder run, never a token."""
    out, _, _ = trained_dir
    manifest = Manifest.load(out)
    runtime = TokenizerRuntime(out, manifest, providers="cpu")
    text = manifest.sources.index("purchases")
    texts = [" ".join(["milk x2", "bread", "eggs", "apples"][: 1 + i % 4] * (1 + i // 4)) for i in range(12)]
    lengths = np.array([len(x[0]) for x in runtime.text.tokenizer.encode(texts)])  # one chunk each
    assert any(len(set(lengths[r])) > 1 for r in length_runs(lengths, 8, 0.25))  # some runs are padded
    jobs = [WindowJob(text, text=t) for t in texts]

    async def batched():
        b = MicroBatcher(runtime, ServiceMetrics(), max_batch_size=64, max_wait_ms=50)
        await b.start()
        try:
            return await b.submit(jobs)
        finally:
            await b.stop()

    together = asyncio.run(batched())
    for i, job in enumerate(jobs):
        assert np.array_equal(together[i], asyncio.run(_codes_alone(runtime, job))[0]), i


async def _codes_alone(runtime, job):
    b = MicroBatcher(runtime, ServiceMetrics(), max_batch_size=1)
    await b.start()
    try:
        return await b.submit([job])
    finally:
        await b.stop()


def test_the_engine_leaves_the_queue_gauge_to_the_frontends(trained_dir):
    """With frontends, u2qt_queue_windows is summed over processes, and each frontend counts the windows it
    admitted until they are answered: the engine, which holds the same windows meanwhile, must not add them again."""
    from u2qt.service.batcher import warm_up
    from u2qt.service.engine import InferenceEngine
    from u2qt.service.settings import ServiceSettings

    engine = InferenceEngine(ServiceSettings(artifacts=trained_dir[0], frontends=1))

    async def scenario():
        await engine.start()
        submitted = asyncio.create_task(engine.batcher.submit(warm_up(engine.manifest) * 20))
        await asyncio.sleep(0)  # admitted, not answered yet
        held = engine.batcher.admission.pending
        depth = engine.metrics.registry.get_sample_value("u2qt_queue_windows")
        await submitted
        await engine.batcher.stop()
        return held, depth

    held, depth = asyncio.run(scenario())
    assert held > 0 and depth == 0


def test_engine_frames_survive_any_split_of_the_stream():
    """A stream socket delivers bytes, not messages: frames cut anywhere, or several in one read, must come out
    whole and in order (the engine's and the frontends' reader)."""
    from u2qt.service import engine_protocol as wire

    bodies = [b"", b"x" * 70000, bytes(range(256)) * 3, b"\x00"]
    stream = b"".join(wire.frame(wire.REQUEST, wire.WINDOWS, rid, body) for rid, body in enumerate(bodies))
    expected = [(wire.WINDOWS, rid, body) for rid, body in enumerate(bodies)]
    rng = np.random.default_rng(0)
    for cuts in ([], [1], list(range(1, len(stream))), sorted(rng.choice(len(stream), 40, replace=False))):
        reader, out = wire.Frames(wire.REQUEST), []
        for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            out += reader.feed(stream[a:b])
        assert out == expected and not reader.buffer


def test_windows_reach_the_engine_as_the_frontend_tokenized_them():
    """pack_windows -> unpack_windows: text windows of one and several chunks and tabular windows, in order."""
    from u2qt.service import engine_protocol as wire

    chunks = [[[101, 7, 102]], None, [[101, *range(2, 98), 102], [101, 30000, 102]], [[101, 102]]]
    features = [None, np.array([1.5, -2.0, 0.0], np.float32), None, None]
    windows = list(wire.unpack_windows(wire.pack_windows([0, 2, 0, 1], chunks, features)))
    sources, got_chunks, got_features = (list(x) for x in zip(*windows, strict=True))
    assert sources == [0, 2, 0, 1]
    assert [None if c is None else [x.tolist() for x in c] for c in got_chunks] == chunks
    assert got_features[0] is None and got_features[2] is None and got_features[3] is None
    np.testing.assert_array_equal(got_features[1], features[1])


def test_a_request_to_a_hung_engine_gets_engine_unavailable_not_a_hang(tmp_path):
    """An engine that is alive (connected, answering pings) but never answers a batch: the request fails with
    EngineUnavailable (503) after request_timeout_s, and the connection stays usable."""
    from u2qt.service import engine_protocol as wire
    from u2qt.service.engine import FrontendLink
    from u2qt.service.engine_client import EngineConnection, EngineUnavailable

    class HungEngine:
        def receive(self, link, kind, rid, body):
            if kind == wire.PING:
                link.send(rid, wire.OK, wire.encoder.encode(wire.EngineInfo(1, "v", [], wire.Load())))

    async def scenario():
        path = str(tmp_path / "engine.sock")
        server = await asyncio.get_running_loop().create_unix_server(lambda: FrontendLink(HungEngine(), set()), path)
        connection = EngineConnection(path, request_timeout_s=0.3)
        try:
            await connection.start(5)
            async with asyncio.timeout(10):  # the old connection waited for ever: this fails instead of hanging
                try:
                    await connection.request(wire.WINDOWS, b"")
                    raise AssertionError("a hung engine answered")
                except EngineUnavailable:
                    pass
            assert connection.up and not connection._waiting
            assert (await connection.request(wire.PING)).model_version == "v"
        finally:
            await connection.stop()
            server.close()

    asyncio.run(scenario())


def test_a_frontend_refuses_histories_while_the_engines_history_queue_is_behind():
    """With frontends, GET /users/{id}/embedding is admitted by the engine's history queue as the engine last
    reported it (1,000 queued at 10/s: 100 s ahead, far over a 100 ms budget), not by the frontend's own count
    alone: 429 instead of a request that waits for minutes. An idle frontend still admits (a stale report must not
    shut it for good), and once the engine has caught up, requests are admitted again."""
    from u2qt.service import engine_protocol as wire
    from u2qt.service.batcher import QueueFull
    from u2qt.service.engine_client import RemoteEmbeddingBatcher

    class SlowEngine:
        """An EngineConnection's side the batcher sees: loads pushed to it, requests answered when released."""

        up = True

        def __init__(self):
            self.load, self.release, self.listeners = wire.Load(histories=1000, history_rate=10.0), asyncio.Event(), []

        def watch_load(self, listener):
            self.listeners.append(listener)
            listener(self.load)

        def report(self, load):
            self.load = load
            for listener in self.listeners:
                listener(load)

        async def request(self, kind, body):
            await self.release.wait()
            return wire.Embeddings(np.zeros((1, 4), np.float32).tobytes(), 4, self.load)

    async def scenario():
        engine = SlowEngine()
        batcher = RemoteEmbeddingBatcher(engine, ServiceMetrics(), max_queue=100, max_delay_ms=100)
        history = (np.zeros(8, np.int64), np.zeros(8, np.int64), np.zeros(8, np.int64))
        first = asyncio.create_task(batcher.embed([history]))
        await asyncio.sleep(0)
        assert batcher.admission.pending == 1, "the first request, on an idle frontend, is admitted"
        try:
            async with asyncio.timeout(5):  # admitted, it would wait on the engine: fail, do not hang
                await batcher.embed([history])
            raise AssertionError("admitted behind 100 s of the engine's histories")
        except QueueFull:
            pass
        engine.report(wire.Load())
        engine.release.set()
        assert (await first).shape == (1, 4)
        assert (await batcher.embed([history])).shape == (1, 4)

    asyncio.run(scenario())
